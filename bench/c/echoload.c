/*
** echoload.c -- the W3 load client: lock-step echo round trips, on libuv.
**
**   echoload -p PORT [-H 127.0.0.1] [-c CONNS] [-s BYTES] [-W WINDOW]
**            [-d SECONDS] [-w WARMUP_SECONDS] [-n MAX_ROUNDTRIPS]
**
** Each of CONNS connections sends a BYTES-long message, waits until the
** same BYTES came back (checking every byte), and sends the next one: lock
** step. With WINDOW > 1 (default 1) each connection keeps WINDOW messages in
** flight, sending the next as each one has come back: a stream. Messages
** echoed after the warm-up and within the measured DURATION are counted,
** bounded by MAX_ROUNDTRIPS in all. Prints one line:
**
**   conns=64 bytes=64 seconds=5.000 roundtrips=N rate=R mib_s=M errors=E
**
** rate is round trips per second, mib_s the echoed payload in MiB/s (one
** direction). Exit status 1 when a connection failed or an echo was wrong.
*/

#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  size_t got;   /* bytes of the current echo received */
  int inflight; /* messages sent and not yet fully echoed */
  int open;
} client;

static size_t msglen = 64;
static char *msg;
static char rbuf[1 << 16];
static client *clients;
static int nconns = 64, window = 1;
static int stopping, counting;
static uint64_t roundtrips, max_roundtrips = 1000000000ull;
static uint64_t t_start, t_end;
static unsigned errors;
static uv_timer_t timer;
static double warmup = 0, duration = 5;

static void stop_all(void);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = rbuf;
  buf->len = sizeof rbuf;
}

static void on_closed(uv_handle_t *h) { (void)h; }

static void client_close(client *c) {
  if (!c->open) return;
  c->open = 0;
  uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_written(uv_write_t *req, int status) {
  client *c = req->data;
  free(req);
  if (status < 0 && !stopping) {
    fprintf(stderr, "echoload: write: %s\n", uv_strerror(status));
    errors++;
    client_close(c);
  }
}

/* Send the message: straight to the kernel when it takes it all (and
** nothing is queued before it), the rest queued; msg is never modified. */
static void send_msg(client *c) {
  uv_buf_t b = uv_buf_init(msg, (unsigned)msglen);
  int r = 0;
  c->inflight++;
  if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) == 0) {
    r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (r == (int)msglen) return;
    if (r < 0 && r != UV_EAGAIN) {
      fprintf(stderr, "echoload: write: %s\n", uv_strerror(r));
      errors++;
      client_close(c);
      return;
    }
    if (r < 0) r = 0;
  }
  uv_write_t *req = malloc(sizeof *req);
  if (!req) {
    errors++;
    client_close(c);
    return;
  }
  req->data = c;
  b = uv_buf_init(msg + r, (unsigned)(msglen - (size_t)r));
  r = uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
  if (r < 0) {
    free(req);
    fprintf(stderr, "echoload: write: %s\n", uv_strerror(r));
    errors++;
    client_close(c);
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  client *c = s->data;
  if (nread == 0) return;
  if (nread < 0) {
    if (!stopping) {
      fprintf(stderr, "echoload: read: %s\n", uv_strerror((int)nread));
      errors++;
    }
    client_close(c);
    return;
  }
  const char *p = buf->base;
  size_t n = (size_t)nread;
  while (n > 0) { /* the chunk may finish one message and start the next */
    size_t take = msglen - c->got < n ? msglen - c->got : n;
    if (c->inflight == 0 || memcmp(p, msg + c->got, take) != 0) {
      fprintf(stderr, "echoload: wrong echo at byte %zu\n", c->got);
      errors++;
      client_close(c);
      return;
    }
    c->got += take;
    p += take;
    n -= take;
    if (c->got < msglen) break;
    c->got = 0;
    c->inflight--;
    if (counting) {
      roundtrips++;
      if (roundtrips >= max_roundtrips) {
        t_end = uv_hrtime();
        stop_all();
        return;
      }
    }
    if (!stopping) send_msg(c);
  }
}

static void on_connect(uv_connect_t *req, int status) {
  client *c = req->data;
  if (status < 0) {
    fprintf(stderr, "echoload: connect: %s\n", uv_strerror(status));
    errors++;
    client_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  for (int i = 0; i < window && c->open; i++) send_msg(c);
}

static void stop_all(void) {
  if (stopping) return;
  stopping = 1;
  counting = 0;
  uv_timer_stop(&timer);
  uv_close((uv_handle_t *)&timer, NULL);
  for (int i = 0; i < nconns; i++) client_close(&clients[i]);
}

static void on_timer(uv_timer_t *t) {
  if (!counting) { /* warm-up over: start counting */
    counting = 1;
    roundtrips = 0;
    t_start = uv_hrtime();
    uv_timer_start(t, on_timer, (uint64_t)(duration * 1000), 0);
  } else {
    t_end = uv_hrtime();
    stop_all();
  }
}

static void usage(void) {
  fputs("usage: echoload -p PORT [-H HOST] [-c CONNS] [-s BYTES] "
        "[-W WINDOW] [-d SECONDS] [-w WARMUP] [-n MAX_ROUNDTRIPS]\n",
        stderr);
  exit(2);
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int port = 0, opt;
  signal(SIGPIPE, SIG_IGN); /* a peer that goes away gives EPIPE */
  while ((opt = getopt(argc, argv, "p:H:c:s:W:d:w:n:")) != -1) {
    switch (opt) {
      case 'p': port = atoi(optarg); break;
      case 'H': host = optarg; break;
      case 'c': nconns = atoi(optarg); break;
      case 's': msglen = (size_t)atol(optarg); break;
      case 'W': window = atoi(optarg); break;
      case 'd': duration = atof(optarg); break;
      case 'w': warmup = atof(optarg); break;
      case 'n': max_roundtrips = strtoull(optarg, NULL, 10); break;
      default: usage();
    }
  }
  if (port <= 0 || nconns <= 0 || msglen == 0 || window <= 0 || duration <= 0 ||
      duration > 3600 || max_roundtrips == 0)
    usage();
  msg = malloc(msglen);
  clients = calloc((size_t)nconns, sizeof *clients);
  if (!msg || !clients) return 1;
  for (size_t i = 0; i < msglen; i++) msg[i] = (char)('a' + i % 26);

  uv_loop_t *loop = uv_default_loop();
  struct sockaddr_in addr;
  if (uv_ip4_addr(host, port, &addr) < 0) usage();
  for (int i = 0; i < nconns; i++) {
    client *c = &clients[i];
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    c->creq.data = c;
    c->open = 1;
    int r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&addr,
                           on_connect);
    if (r < 0) {
      fprintf(stderr, "echoload: connect: %s\n", uv_strerror(r));
      errors++;
      client_close(c);
    }
  }
  uv_timer_init(loop, &timer);
  if (warmup > 0) {
    uv_timer_start(&timer, on_timer, (uint64_t)(warmup * 1000), 0);
  } else {
    counting = 1;
    t_start = uv_hrtime();
    uv_timer_start(&timer, on_timer, (uint64_t)(duration * 1000), 0);
  }
  uv_run(loop, UV_RUN_DEFAULT);
  if (!t_end) t_end = uv_hrtime();
  double secs = t_start ? (double)(t_end - t_start) / 1e9 : 0;
  double rate = secs > 0 ? (double)roundtrips / secs : 0;
  printf("conns=%d bytes=%zu window=%d seconds=%.3f roundtrips=%llu rate=%.1f "
         "mib_s=%.2f errors=%u\n",
         nconns, msglen, window, secs, (unsigned long long)roundtrips, rate,
         rate * (double)msglen / (1024.0 * 1024.0), errors);
  return errors ? 1 : 0;
}
