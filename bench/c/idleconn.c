/*
** idleconn.c -- the W5 connection opener, on libuv.
**
**   idleconn -p PORT -n CONNS [-H 127.0.0.1] [-b IN_FLIGHT] [-t HOLD_SECONDS]
**            [-x]
**
** Opens CONNS connections to an echo server, at most IN_FLIGHT (default
** 128) being set up at a time. Each sends one byte and waits for it to come
** back, so the server has accepted it and is waiting on it again; then the
** connection stays idle. When every connection is set up (or failed, or
** 60 s passed) it prints
**
**   ready opened=N failed=F seconds=S
**
** and holds them until SIGTERM/SIGINT or HOLD_SECONDS (default 120) pass;
** -x closes them at once instead (a warm-up). RLIMIT_NOFILE is raised to its
** hard limit first.
*/

#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>
#include <uv.h>

typedef struct {
  uv_tcp_t tcp;
  uv_connect_t creq;
  int open;
} client;

static client *clients;
static int nconns, next, inflight_max = 128, inflight, opened, failed;
static int exit_at_once, finished;
static double hold = 120;
static struct sockaddr_in addr;
static uv_loop_t *loop;
static uv_timer_t timer;
static uv_signal_t sigterm, sigint;
static uint64_t t0;
static char rbuf[256];

static void start_more(void);

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = rbuf;
  buf->len = sizeof rbuf;
}

static void client_close(client *c) {
  if (!c->open) return;
  c->open = 0;
  uv_close((uv_handle_t *)&c->tcp, NULL);
}

static void finish(void) {
  int i;
  uv_timer_stop(&timer);
  uv_close((uv_handle_t *)&timer, NULL);
  uv_close((uv_handle_t *)&sigterm, NULL);
  uv_close((uv_handle_t *)&sigint, NULL);
  for (i = 0; i < nconns; i++) client_close(&clients[i]);
}

static void on_hold_over(uv_timer_t *t) {
  (void)t;
  finish();
}

static void on_signal(uv_signal_t *s, int signum) {
  (void)s;
  (void)signum;
  finish();
}

static void report_ready(void) {
  if (finished) return;
  finished = 1;
  uv_timer_stop(&timer);
  printf("ready opened=%d failed=%d seconds=%.3f\n", opened, failed,
         (double)(uv_hrtime() - t0) / 1e9);
  fflush(stdout);
  if (exit_at_once) {
    finish();
    return;
  }
  uv_timer_start(&timer, on_hold_over, (uint64_t)(hold * 1000), 0);
}

static void one_done(int ok) {
  inflight--;
  if (ok)
    opened++;
  else
    failed++;
  if (opened + failed == nconns)
    report_ready();
  else
    start_more();
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  client *c = s->data;
  (void)buf;
  if (nread == 0) return;
  uv_read_stop(s);
  if (nread < 0) {
    if (!finished) fprintf(stderr, "idleconn: read: %s\n", uv_strerror((int)nread));
    client_close(c);
  }
  if (!finished) one_done(nread > 0);
}

static void on_connect(uv_connect_t *req, int status) {
  client *c = req->data;
  if (status < 0) {
    if (!finished) {
      fprintf(stderr, "idleconn: connect: %s\n", uv_strerror(status));
      client_close(c);
      one_done(0);
    }
    return;
  }
  uv_buf_t b = uv_buf_init("x", 1);
  if (uv_try_write((uv_stream_t *)&c->tcp, &b, 1) != 1 ||
      uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0) {
    client_close(c);
    one_done(0);
  }
}

static void start_more(void) {
  while (!finished && inflight < inflight_max && next < nconns) {
    client *c = &clients[next++];
    uv_tcp_init(loop, &c->tcp);
    c->tcp.data = c;
    c->creq.data = c;
    c->open = 1;
    inflight++;
    int r = uv_tcp_connect(&c->creq, &c->tcp, (const struct sockaddr *)&addr,
                           on_connect);
    if (r < 0) {
      fprintf(stderr, "idleconn: connect: %s\n", uv_strerror(r));
      client_close(c);
      inflight--;
      failed++;
      if (opened + failed == nconns) report_ready();
    }
  }
}

static void on_setup_timeout(uv_timer_t *t) {
  (void)t;
  fprintf(stderr, "idleconn: setup took over 60 s, %d of %d open\n", opened,
          nconns);
  failed = nconns - opened;
  report_ready();
}

static void usage(void) {
  fputs("usage: idleconn -p PORT -n CONNS [-H HOST] [-b IN_FLIGHT] "
        "[-t HOLD_SECONDS] [-x]\n",
        stderr);
  exit(2);
}

int main(int argc, char **argv) {
  const char *host = "127.0.0.1";
  int port = 0, opt;
  struct rlimit rl;
  signal(SIGPIPE, SIG_IGN); /* a peer that goes away gives EPIPE */
  while ((opt = getopt(argc, argv, "p:n:H:b:t:x")) != -1) {
    switch (opt) {
      case 'p': port = atoi(optarg); break;
      case 'n': nconns = atoi(optarg); break;
      case 'H': host = optarg; break;
      case 'b': inflight_max = atoi(optarg); break;
      case 't': hold = atof(optarg); break;
      case 'x': exit_at_once = 1; break;
      default: usage();
    }
  }
  if (port <= 0 || nconns <= 0 || inflight_max <= 0 || hold <= 0 ||
      hold > 3600)
    usage();
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  if (uv_ip4_addr(host, port, &addr) < 0) usage();
  clients = calloc((size_t)nconns, sizeof *clients);
  if (!clients) return 1;
  loop = uv_default_loop();
  uv_timer_init(loop, &timer);
  uv_signal_init(loop, &sigterm);
  uv_signal_init(loop, &sigint);
  uv_signal_start(&sigterm, on_signal, SIGTERM);
  uv_signal_start(&sigint, on_signal, SIGINT);
  t0 = uv_hrtime();
  uv_timer_start(&timer, on_setup_timeout, 60000, 0);
  start_more();
  uv_run(loop, UV_RUN_DEFAULT);
  return opened == nconns ? 0 : 1;
}
