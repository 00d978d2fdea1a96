/*
** probe.c -- checks that a benchmark server answers correctly before it is
** measured.
**
**   probe [-e] [-t MS] PORT REQUEST EXPECTED
**
** Connects to 127.0.0.1:PORT, sends REQUEST, reads until as many bytes as
** EXPECTED came (or EOF, or MS milliseconds, default 2000, passed) and
** compares. With -e the server must then close the connection. REQUEST and
** EXPECTED take C escapes: \r \n \t \\ \xHH. Exit 0 on a match; otherwise
** prints what came and exits 1.
*/

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static size_t unescape(char *s) {
  char *w = s;
  const char *r = s;
  while (*r) {
    if (*r != '\\' || !r[1]) {
      *w++ = *r++;
      continue;
    }
    r++;
    switch (*r) {
      case 'r': *w++ = '\r'; r++; break;
      case 'n': *w++ = '\n'; r++; break;
      case 't': *w++ = '\t'; r++; break;
      case 'x': {
        char hex[3] = {0, 0, 0};
        if (r[1] && r[2]) {
          hex[0] = r[1];
          hex[1] = r[2];
          *w++ = (char)strtol(hex, NULL, 16);
          r += 3;
        } else {
          *w++ = *r++;
        }
        break;
      }
      default: *w++ = *r++;
    }
  }
  return (size_t)(w - s);
}

static void show(const char *label, const char *p, size_t n) {
  fprintf(stderr, "%s (%zu bytes): \"", label, n);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)p[i];
    if (ch == '\r')
      fputs("\\r", stderr);
    else if (ch == '\n')
      fputs("\\n", stderr);
    else if (ch < 32 || ch > 126)
      fprintf(stderr, "\\x%02x", ch);
    else
      fputc(ch, stderr);
  }
  fputs("\"\n", stderr);
}

static long long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int main(int argc, char **argv) {
  int expect_eof = 0, timeout = 2000, opt;
  signal(SIGPIPE, SIG_IGN); /* a peer that goes away gives EPIPE */
  while ((opt = getopt(argc, argv, "et:")) != -1) {
    if (opt == 'e')
      expect_eof = 1;
    else if (opt == 't')
      timeout = atoi(optarg);
    else
      goto usage;
  }
  if (argc - optind != 3) goto usage;
  int port = atoi(argv[optind]);
  char *req = argv[optind + 1], *exp = argv[optind + 2];
  size_t reqlen = unescape(req), explen = unescape(exp);

  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((unsigned short)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    fprintf(stderr, "probe: connect: %s\n", strerror(errno));
    return 1;
  }
  for (size_t off = 0; off < reqlen;) {
    ssize_t w = write(fd, req + off, reqlen - off);
    if (w < 0) {
      fprintf(stderr, "probe: write: %s\n", strerror(errno));
      return 1;
    }
    off += (size_t)w;
  }
  size_t cap = explen + 4096, got = 0;
  char *buf = malloc(cap);
  long long deadline = now_ms() + timeout;
  int eof = 0;
  /* Read the expected length, then (with -e) on until EOF; without -e a
  ** short grace period catches extra bytes. */
  while (got < cap) {
    long long left = deadline - now_ms();
    if (got >= explen && !expect_eof && left > 100) left = 100;
    if (left <= 0) break;
    struct pollfd pfd = {fd, POLLIN, 0};
    int pr = poll(&pfd, 1, (int)left);
    if (pr <= 0) break;
    ssize_t r = read(fd, buf + got, cap - got);
    if (r <= 0) {
      eof = 1;
      break;
    }
    got += (size_t)r;
    if (got >= explen && !expect_eof) deadline = now_ms() + 100;
  }
  close(fd);
  if (got != explen || memcmp(buf, exp, explen) != 0) {
    fputs("probe: wrong answer\n", stderr);
    show("expected", exp, explen);
    show("got", buf, got);
    return 1;
  }
  if (expect_eof && !eof) {
    fputs("probe: the server did not close the connection\n", stderr);
    return 1;
  }
  return 0;
usage:
  fputs("usage: probe [-e] [-t MS] PORT REQUEST EXPECTED\n", stderr);
  return 2;
}
