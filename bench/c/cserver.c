/*
** cserver.c -- the C baseline ("ceiling") servers of the benchmark, on libuv.
**
**   cserver http|echo|resp PORT
**
** One program, one mode per workload, listening on 127.0.0.1:PORT:
**   http  W1/W2: answers each request head (up to the blank line) with
**         "Hello, World!"; closes after answering "Connection: close".
**   echo  W3/W5: sends every byte back.
**   resp  W4: PING, SET, GET over RESP (inline and multibulk commands,
**         pipelined or not).
**
** What makes it the ceiling: every read lands in one shared buffer, all the
** replies to one read are gathered into one output buffer and sent with one
** uv_try_write; only what the kernel does not take is copied and queued
** (and reading pauses until the queue drains). A connection keeps its own
** input buffer only while a request is split across reads.
*/

#define _GNU_SOURCE
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

enum { MODE_HTTP, MODE_ECHO, MODE_RESP };
static int mode;

typedef struct conn {
  uv_tcp_t tcp;
  char *in; /* unconsumed bytes of a request split across reads */
  size_t inlen, incap;
  unsigned queued;    /* uv_write requests in flight */
  int close_after;    /* close once the queue drains */
  int closing;
} conn;

typedef struct {
  uv_write_t req;
  char data[];
} wreq;

static char rbuf[65536]; /* the one read buffer every connection shares */

/* The output of one read callback; reset at each callback. */
static char *obuf;
static size_t olen, ocap;

static void die(const char *what, int err) {
  fprintf(stderr, "cserver: %s: %s\n", what, uv_strerror(err));
  exit(1);
}

static void out_reserve(size_t n) {
  if (olen + n <= ocap) return;
  size_t cap = ocap ? ocap : 65536;
  while (cap < olen + n) cap *= 2;
  obuf = realloc(obuf, cap);
  if (!obuf) {
    fputs("cserver: out of memory\n", stderr);
    exit(1);
  }
  ocap = cap;
}

static void out(const void *p, size_t n) {
  out_reserve(n);
  memcpy(obuf + olen, p, n);
  olen += n;
}

#define OUTS(lit) out(lit, sizeof(lit) - 1)

/* ---------------------------------------------------------------------- */
/* Connections                                                            */

static void on_closed(uv_handle_t *h) {
  conn *c = h->data;
  free(c->in);
  free(c);
}

static void conn_close(conn *c) {
  if (c->closing) return;
  c->closing = 1;
  uv_close((uv_handle_t *)&c->tcp, on_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  (void)h;
  (void)suggested;
  buf->base = rbuf;
  buf->len = sizeof rbuf;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_written(uv_write_t *req, int status) {
  conn *c = req->data;
  free(req);
  c->queued--;
  if (c->closing) return;
  if (status < 0) {
    conn_close(c);
    return;
  }
  if (c->queued == 0) {
    if (c->close_after)
      conn_close(c);
    else
      uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
  }
}

/* Send p[0..n): try the kernel first, copy and queue only the rest. */
static void send_bytes(conn *c, const char *p, size_t n) {
  if (c->queued == 0 && n > 0) {
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int r = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (r >= 0) {
      p += r;
      n -= (size_t)r;
    } else if (r != UV_EAGAIN) {
      conn_close(c);
      return;
    }
  }
  if (n > 0) {
    wreq *w = malloc(sizeof *w + n);
    if (!w) {
      conn_close(c);
      return;
    }
    memcpy(w->data, p, n);
    w->req.data = c;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    int r = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_written);
    if (r < 0) {
      free(w);
      conn_close(c);
      return;
    }
    c->queued++;
    uv_read_stop((uv_stream_t *)&c->tcp); /* backpressure */
  } else if (c->close_after && c->queued == 0) {
    conn_close(c);
  }
}

/* Keep the unconsumed tail of a read for the next one. */
static void keep_tail(conn *c, const char *p, size_t n) {
  if (n == 0) {
    c->inlen = 0;
    if (c->incap > 65536) { /* do not hold big buffers on idle connections */
      free(c->in);
      c->in = NULL;
      c->incap = 0;
    }
    return;
  }
  if (n > c->incap) {
    size_t cap = c->incap ? c->incap : 1024;
    while (cap < n) cap *= 2;
    char *nb = malloc(cap);
    if (!nb) {
      conn_close(c);
      return;
    }
    memcpy(nb, p, n);
    free(c->in);
    c->in = nb;
    c->incap = cap;
  } else {
    memmove(c->in, p, n);
  }
  c->inlen = n;
}

/* ---------------------------------------------------------------------- */
/* HTTP                                                                   */

static const char HTTP_KEEP[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n"
    "\r\nHello, World!";
static const char HTTP_CLOSE[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 13\r\nContent-Type: text/plain\r\n"
    "Connection: close\r\n\r\nHello, World!";

/* Does the head [p, e) carry "Connection: close"? */
static int wants_close(const char *p, const char *e) {
  while (p < e) {
    const char *nl = memchr(p, '\n', (size_t)(e - p));
    const char *line = nl ? nl + 1 : e;
    if (line + 11 <= e && strncasecmp(line, "connection:", 11) == 0) {
      const char *v = line + 11, *ve = memchr(v, '\r', (size_t)(e - v));
      if (!ve) ve = e;
      for (; v + 5 <= ve; v++)
        if (strncasecmp(v, "close", 5) == 0) return 1;
    }
    p = line;
  }
  return 0;
}

/* Answer every complete head in [p, p+n); returns the bytes consumed. */
static size_t http_process(conn *c, const char *p, size_t n) {
  size_t pos = 0;
  while (pos < n && !c->close_after) {
    const char *end = memmem(p + pos, n - pos, "\r\n\r\n", 4);
    if (!end) break;
    if (wants_close(p + pos, end)) {
      OUTS(HTTP_CLOSE);
      c->close_after = 1;
    } else {
      OUTS(HTTP_KEEP);
    }
    pos = (size_t)(end - p) + 4;
  }
  return c->close_after ? n : pos;
}

/* ---------------------------------------------------------------------- */
/* RESP: PING, SET, GET                                                   */

typedef struct {
  char *key, *val;
  size_t klen, vlen;
} entry;
static entry *table;
static size_t tcap, tcount;

static uint64_t hash(const char *p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  while (n--) h = (h ^ (unsigned char)*p++) * 1099511628211ull;
  return h;
}

static entry *slot(const char *k, size_t kn) {
  size_t i = hash(k, kn) & (tcap - 1);
  while (table[i].key &&
         !(table[i].klen == kn && memcmp(table[i].key, k, kn) == 0))
    i = (i + 1) & (tcap - 1);
  return &table[i];
}

static void table_grow(void) {
  entry *old = table;
  size_t ocap_ = tcap;
  tcap = tcap ? tcap * 2 : 1024;
  table = calloc(tcap, sizeof *table);
  if (!table) {
    fputs("cserver: out of memory\n", stderr);
    exit(1);
  }
  for (size_t i = 0; i < ocap_; i++)
    if (old[i].key) *slot(old[i].key, old[i].klen) = old[i];
  free(old);
}

static void db_set(const char *k, size_t kn, const char *v, size_t vn) {
  if ((tcount + 1) * 2 > tcap) table_grow();
  entry *e = slot(k, kn);
  if (!e->key) {
    e->key = malloc(kn ? kn : 1);
    memcpy(e->key, k, kn);
    e->klen = kn;
    tcount++;
  }
  free(e->val);
  e->val = malloc(vn ? vn : 1);
  memcpy(e->val, v, vn);
  e->vlen = vn;
}

static entry *db_get(const char *k, size_t kn) {
  if (!tcap) return NULL;
  entry *e = slot(k, kn);
  return e->key ? e : NULL;
}

static void out_bulk(const char *p, size_t n) {
  char hdr[32];
  int h = snprintf(hdr, sizeof hdr, "$%zu\r\n", n);
  out_reserve((size_t)h + n + 2);
  memcpy(obuf + olen, hdr, (size_t)h);
  memcpy(obuf + olen + h, p, n);
  memcpy(obuf + olen + h + n, "\r\n", 2);
  olen += (size_t)h + n + 2;
}

#define MAXARGS 16

static int cmd_is(const char *p, size_t n, const char *name) {
  return strlen(name) == n && strncasecmp(p, name, n) == 0;
}

static void resp_exec(int argc, const char **av, const size_t *al) {
  if (argc == 0) return;
  if (cmd_is(av[0], al[0], "PING")) {
    if (argc == 1)
      OUTS("+PONG\r\n");
    else
      out_bulk(av[1], al[1]);
  } else if (cmd_is(av[0], al[0], "SET") && argc >= 3) {
    db_set(av[1], al[1], av[2], al[2]);
    OUTS("+OK\r\n");
  } else if (cmd_is(av[0], al[0], "GET") && argc == 2) {
    entry *e = db_get(av[1], al[1]);
    if (e)
      out_bulk(e->val, e->vlen);
    else
      OUTS("$-1\r\n");
  } else {
    OUTS("-ERR unknown command\r\n");
  }
}

/* Parse a decimal after p[0] up to "\r\n" within [p, e); -1: incomplete,
** -2: malformed. *next is set past the "\r\n". */
static long long parse_len(const char *p, const char *e, const char **next) {
  const char *cr = memchr(p, '\r', (size_t)(e - p));
  if (!cr || cr + 1 >= e) return -1;
  long long v = 0;
  for (const char *q = p + 1; q < cr; q++) {
    if (*q < '0' || *q > '9' || v > (1ll << 40)) return -2;
    v = v * 10 + (*q - '0');
  }
  *next = cr + 2;
  return v;
}

/* Execute every complete command in [p, p+n); returns the bytes consumed,
** or (size_t)-1 on a protocol error. */
static size_t resp_process(const char *p, size_t n) {
  const char *s = p, *e = p + n;
  const char *av[MAXARGS];
  size_t al[MAXARGS];
  while (s < e) {
    int argc = 0;
    const char *q;
    if (*s == '*') {
      long long cnt = parse_len(s, e, &q);
      if (cnt == -1) break;
      if (cnt < 0 || cnt > MAXARGS) return (size_t)-1;
      int complete = 1;
      for (long long i = 0; i < cnt; i++) {
        if (q >= e) {
          complete = 0;
          break;
        }
        if (*q != '$') return (size_t)-1;
        long long len = parse_len(q, e, &q);
        if (len == -1) {
          complete = 0;
          break;
        }
        if (len < 0) return (size_t)-1;
        if (e - q < len + 2) {
          complete = 0;
          break;
        }
        av[argc] = q;
        al[argc++] = (size_t)len;
        q += len + 2;
      }
      if (!complete) break;
    } else {
      const char *nl = memchr(s, '\n', (size_t)(e - s));
      if (!nl) break;
      const char *le = nl > s && nl[-1] == '\r' ? nl - 1 : nl;
      for (const char *t = s; t < le && argc < MAXARGS;) {
        while (t < le && *t == ' ') t++;
        if (t == le) break;
        const char *w = t;
        while (t < le && *t != ' ') t++;
        av[argc] = w;
        al[argc++] = (size_t)(t - w);
      }
      q = nl + 1;
    }
    resp_exec(argc, av, al);
    s = q;
  }
  return (size_t)(s - p);
}

/* ---------------------------------------------------------------------- */

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf) {
  conn *c = st->data;
  if (nread < 0) {
    conn_close(c);
    return;
  }
  if (nread == 0) return;
  if (mode == MODE_ECHO) {
    send_bytes(c, buf->base, (size_t)nread);
    return;
  }
  const char *p = buf->base;
  size_t n = (size_t)nread;
  if (c->inlen) { /* a request was split: continue it in the own buffer */
    if (c->inlen + n > c->incap) {
      size_t cap = c->incap * 2;
      while (cap < c->inlen + n) cap *= 2;
      char *nb = realloc(c->in, cap);
      if (!nb) {
        conn_close(c);
        return;
      }
      c->in = nb;
      c->incap = cap;
    }
    memcpy(c->in + c->inlen, p, n);
    c->inlen += n;
    p = c->in;
    n = c->inlen;
  }
  olen = 0;
  size_t used = mode == MODE_HTTP ? http_process(c, p, n) : resp_process(p, n);
  if (used == (size_t)-1) {
    OUTS("-ERR protocol error\r\n");
    c->close_after = 1;
    used = n;
  }
  if (n - used > (1u << 20)) { /* a request head over 1 MiB: drop it */
    conn_close(c);
    return;
  }
  keep_tail(c, p + used, n - used);
  send_bytes(c, obuf, olen);
}

static void on_connection(uv_stream_t *server, int status) {
  if (status < 0) return;
  conn *c = calloc(1, sizeof *c);
  if (!c) return;
  uv_tcp_init(server->loop, &c->tcp);
  c->tcp.data = c;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
    conn_close(c);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

int main(int argc, char **argv) {
  signal(SIGPIPE, SIG_IGN); /* a peer that goes away gives EPIPE */
  if (argc != 3) {
    fputs("usage: cserver http|echo|resp PORT\n", stderr);
    return 2;
  }
  if (strcmp(argv[1], "http") == 0)
    mode = MODE_HTTP;
  else if (strcmp(argv[1], "echo") == 0)
    mode = MODE_ECHO;
  else if (strcmp(argv[1], "resp") == 0)
    mode = MODE_RESP;
  else {
    fprintf(stderr, "cserver: unknown mode %s\n", argv[1]);
    return 2;
  }
  int port = atoi(argv[2]);
  uv_loop_t *loop = uv_default_loop();
  uv_tcp_t server;
  struct sockaddr_in addr;
  int r;
  uv_tcp_init(loop, &server);
  uv_ip4_addr("127.0.0.1", port, &addr);
  if ((r = uv_tcp_bind(&server, (const struct sockaddr *)&addr, 0)) < 0)
    die("bind", r);
  if ((r = uv_listen((uv_stream_t *)&server, 4096, on_connection)) < 0)
    die("listen", r);
  printf("cserver %s listening on 127.0.0.1:%d\n", argv[1], port);
  fflush(stdout);
  uv_run(loop, UV_RUN_DEFAULT);
  return 0;
}
