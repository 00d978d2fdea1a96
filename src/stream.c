/*
** stream.c -- reading and writing stream sockets (TCP, unix stream), and
** standard input. A socket is its own non-blocking descriptor, which a
** uv_poll_t watches (a libuv stream would cost each idle connection 88
** bytes more); standard input is a libuv stream (tty.c), read only.
** Reads land in one loop-wide buffer, then in a per-socket buffer that
** exists only while unread bytes wait; framing scans it in C. Writes go
** to the kernel at once and queue only the rest, anchoring the Lua
** strings; small writes from tasks are gathered and leave in one write
** per socket when the task gives control back to the loop.
*/

#define _GNU_SOURCE /* IOV_MAX */

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "internal.h"

/* Writes waiting for the kernel are sent this many buffers a sendmsg. */
#define SR_IOV_QUEUED 64

/* A write waiting for the kernel: bufs[first..nbufs) are still to go
** (uv_buf_t is laid out as struct iovec). */
struct sr_out {
  sr_out *next;
  int anchor;  /* registry ref to the string(s) being written, or */
  char *owned; /* gathered bytes this request owns (freed when done) */
  unsigned first, nbufs;
  uv_buf_t bufs[1];
};

/* ---------------------------------------------------------------------- */
/* Watching the descriptor                                                */

static void sr_stream_poll_cb(uv_poll_t *h, int status, int events);

/*
** Watch for what s needs: readable while reading (draining, for a closed
** socket), or while a task waits to accept; writable while connecting, or
** while writes wait for the kernel. It changes only as those do. Returns
** 0 or a UV_E* error.
*/
int sr__stream_watch(sr_socket *s) {
  int want = 0;
  if (s->kind == SR_TTY) return 0;
  if (s->listening ? s->reader != NULL : s->reading) want |= UV_READABLE;
  if (s->connect_status == 1 || s->nwrites > 0) want |= UV_WRITABLE;
  return sr__socket_poll(s, want, sr_stream_poll_cb);
}

/* ---------------------------------------------------------------------- */
/* Reading                                                                */

/* (standard input: libuv reads it) */
static void sr_stream_alloc_cb(uv_handle_t *h, size_t suggested,
                               uv_buf_t *buf) {
  sr_loop *lp = sr_socket_loop((sr_socket *)h->data);
  (void)suggested;
  if (lp->lent != NULL) sr__stream_reclaim(lp); /* lent by read_now, say */
  buf->base = lp->rbuf;
  buf->len = sizeof lp->rbuf;
}

/* Append to the socket's unread bytes, growing or compacting the buffer. */
int sr__stream_append(sr_socket *s, const char *p, size_t n) {
  if (n > SR_BUF_MAX - s->len) return UV_ENOBUFS;
  if (s->buf == NULL) {
    size_t cap = n < 4096 ? 4096 : n;
    s->buf = malloc(cap);
    if (s->buf == NULL) return UV_ENOMEM;
    s->cap = (uint32_t)cap;
    s->off = s->len = 0;
  } else if (s->off + s->len + n > s->cap) {
    if (s->len + n <= s->cap) { /* room enough once consumed bytes go */
      memmove(s->buf, s->buf + s->off, s->len);
    } else {
      size_t cap = (size_t)s->cap * 2;
      char *nb;
      while (cap < s->len + n) cap *= 2;
      if (cap > SR_BUF_MAX) cap = SR_BUF_MAX;
      nb = malloc(cap);
      if (nb == NULL) return UV_ENOMEM;
      memcpy(nb, s->buf + s->off, s->len);
      free(s->buf);
      s->buf = nb;
      s->cap = (uint32_t)cap;
    }
    s->off = 0;
  }
  memcpy(s->buf + s->off + s->len, p, n);
  s->len += (uint32_t)n;
  return 0;
}

/* Drop n bytes from the front; an emptied buffer is freed, so an idle
** connection holds no read memory. */
static void sr_stream_consume(sr_socket *s, size_t n) {
  /* Pushing a result can run a finalizer that closes the socket, which
  ** releases its buffer: then there is nothing left to consume. */
  if (n > s->len) return;
  s->off += (uint32_t)n;
  s->len -= (uint32_t)n;
  s->scanned = 0;
  if (s->len == 0) {
    if (!s->borrowed) free(s->buf);
    s->buf = NULL;
    s->borrowed = 0;
    s->off = s->cap = 0;
  }
}

/* The loop's read buffer was lent to a reader (see the read callback) and
** is needed again: keep what the reader left in memory of our own. */
static int sr_stream_unborrow(sr_socket *s) {
  const char *rest = s->buf + s->off;
  size_t n = s->len;
  s->buf = NULL;
  s->borrowed = 0;
  s->off = s->len = s->cap = s->scanned = 0;
  return n > 0 ? sr__stream_append(s, rest, n) : 0;
}

static void sr_stream_stop(sr_socket *s) {
  if (s->reading) {
    s->reading = 0;
    if (s->kind == SR_TTY)
      uv_read_stop(&s->h.stream);
    else
      sr__stream_watch(s);
  }
}

/* nread bytes (or EOF, or an error) read into the loop's buffer, for the
** reader of s, which is about to run (lend: it may read them in place). */
static inline __attribute__((always_inline)) void
sr_stream_received(sr_socket *s, ssize_t nread, int lend) {
  int err;
  if (nread > 0 && s->len == 0 && lend) {
    /* Zero copy: the reader reads straight from the loop's buffer; it
    ** usually takes everything (a request, a block) so nothing is copied.
    ** What it leaves is copied before the buffer is filled again. */
    s->buf = sr_socket_loop(s)->rbuf;
    s->off = s->scanned = s->cap = 0;
    s->len = (uint32_t)nread;
    s->borrowed = 1;
    sr_socket_loop(s)->lent = s;
  } else if (nread > 0) {
    err = sr__stream_append(s, sr_socket_loop(s)->rbuf, (size_t)nread);
    if (err < 0) {
      s->rerr = err;
      sr_stream_stop(s);
    }
  } else if (nread < 0) {
    int soerr = 0;
    socklen_t len = sizeof soerr;
    /* a peer that reset the connection after its FIN leaves the error in
    ** SO_ERROR, and the reset is the news (what we sent was lost): report
    ** that rather than the end */
    if (nread == UV_EOF && s->kind == SR_TCP &&
        getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) == 0 &&
        soerr != 0)
      nread = -soerr;
    if (nread == UV_EOF)
      s->eof = 1;
    else
      s->rerr = (int16_t)nread;
    sr_stream_stop(s);
  }
}

/* What a read brought: for the reader, which runs now. */
static void sr_stream_got(sr_socket *s, ssize_t nread) {
  sr_stream_received(s, nread, s->reader != NULL);
  /* Flow control: with no reader waiting, stop taking more than a bounded
  ** amount from the kernel; a reader waiting resumes it. */
  if (s->reader == NULL && s->len >= SR_READ_HIGH_WATER) sr_stream_stop(s);
  if (nread != 0) sr__socket_wake(&s->reader, 0);
  sr__stream_reclaim(sr_socket_loop(s));
}

static void sr_stream_read_cb(uv_stream_t *stream, ssize_t nread,
                              const uv_buf_t *buf) {
  (void)buf; /* the loop's read buffer */
  sr_stream_got(stream->data, nread);
}

/* One read(2) into the loop's buffer: bytes, UV_EOF, a UV_E* error, or 0
** when there is nothing to read now. */
static ssize_t sr_stream_read_fd(sr_socket *s) {
  sr_loop *lp = sr_socket_loop(s);
  ssize_t n;
  sr__stream_reclaim(lp); /* another reader may have the buffer */
  do
    n = read(s->fd, lp->rbuf, sizeof lp->rbuf);
  while (n < 0 && errno == EINTR);
  /* a full buffer left more behind, likely: see sr_stream_read_now */
  s->read_now = n == (ssize_t)sizeof lp->rbuf;
  if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
  return n == 0 ? UV_EOF : n;
}

/*
** The loop's read buffer back from the reader it was lent to, which keeps
** what it left unread in memory of its own: at the end of the read
** callback, or before anything else fills the buffer while the reader's
** task still runs (a datagram received in that task, say).
*/
void sr__stream_reclaim(sr_loop *lp) {
  sr_socket *s = lp->lent;
  int err;
  if (s == NULL) return;
  lp->lent = NULL;
  if (s->borrowed && (err = sr_stream_unborrow(s)) < 0) {
    s->rerr = (int16_t)err;
    sr_stream_stop(s);
  }
}

/*
** A read(2) that will likely find bytes, made before waiting on the
** poller (s->read_now). A connection just accepted usually has its first
** request waiting already: read it at once, rather than watch the
** descriptor and come back after a turn of the loop; a server that answers
** and closes then never registers the connection with the poller at all.
** And a read that filled the loop's buffer left more behind, as a bulk
** transfer does each time: the next read takes it without an epoll_wait
** first (libuv's own reads go on while they fill the buffer). Called by a
** read that found too little buffered. Returns whether the read brought
** anything (bytes, EOF or an error).
*/
static int sr_stream_read_now(sr_socket *s) {
  ssize_t n;
  if ((n = sr_stream_read_fd(s)) == 0) return 0;
  sr_stream_received(s, n, 1);
  return 1;
}

/* Start reading in the background, if not already and not at EOF. */
void sr__stream_start(sr_socket *s) {
  if (!s->reading && !s->eof && s->rerr == 0) {
    int err;
    s->reading = 1;
    err = s->kind == SR_TTY ? uv_read_start(&s->h.stream, sr_stream_alloc_cb,
                                            sr_stream_read_cb)
                            : sr__stream_watch(s);
    if (err < 0) {
      s->reading = 0;
      s->rerr = (int16_t)err;
    }
  }
}

/* Whether the peer sent bytes nobody read (in our buffer or still in the
** kernel's) and may send more: a close now would reset the connection. */
int sr__stream_unread(sr_socket *s) {
  int n = 0;
  if (!s->connected || s->eof || s->rerr != 0 || s->kind == SR_TTY)
    return 0;
  return s->len > 0 || (ioctl(s->fd, FIONREAD, &n) == 0 && n > 0);
}

/* The socket is being closed by the script: stop reading, free unread. */
void sr__stream_release(sr_socket *s) {
  sr__stream_flush(s); /* gathered bytes still go, as queued ones do */
  /* The poll is left as it is: closing the handle stops it, and a linger
  ** watches anew (sr__socket_close), so it costs no epoll_ctl of its own. */
  if (s->kind == SR_TTY)
    sr_stream_stop(s);
  else
    s->reading = 0;
  if (!s->borrowed) free(s->buf);
  s->borrowed = 0;
  s->buf = NULL;
  s->off = s->len = s->cap = 0;
}


/* The format at arg; count and keep as it asks. The API's own calls, not
** luaL_check*: this runs for every format of every read. */
static inline __attribute__((always_inline)) sr_fmt
sr_check_format(lua_State *L, int arg, size_t *count, int *keep) {
  const char *f;
  *keep = 0;
  switch (lua_type(L, arg)) {
    case LUA_TSTRING:
      f = lua_tostring(L, arg);
      if (*f == '*') f++; /* "*l", as Lua 5.1-5.3 and LuaSocket spell it */
      switch (*f) {
        case 'l': return SR_READ_LINE;
        case 'L': *keep = 1; return SR_READ_LINE;
        case 'n': return SR_READ_NUMBER;
        case 'a': return SR_READ_ALL;
      }
      break;
    case LUA_TNUMBER: {
      int isint;
      lua_Integer n = lua_tointegerx(L, arg, &isint);
      if (!isint) luaL_checkinteger(L, arg); /* raises, worded as Lua does */
      luaL_argcheck(L, n >= 0, arg, "count must be >= 0");
      *count = (size_t)n;
      return SR_READ_COUNT;
    }
    case LUA_TNONE:
    case LUA_TNIL:
      return SR_READ_ANY;
    default:
      luaL_checkstring(L, arg); /* raises: the wrong type, named */
  }
  return (sr_fmt)luaL_argerror(L, arg, "invalid format");
}

/*
** s:read's upvalues after the loop: the strings of at most one byte and
** "" on its own. A protocol's type byte, or the "" left of a "\r\n" read
** with "l", then costs an array lookup or a copy from an upvalue instead
** of hashing and interning (for "", Lua's own lua_pushlstring goes
** through its C-string cache and a strcmp).
*/
#define SR_UV_BYTES lua_upvalueindex(2) /* byte c at c + 1 */
#define SR_UV_EMPTY lua_upvalueindex(3)

static void sr_push_bytes(lua_State *L, const char *p, size_t n) {
  if (n == 0)
    lua_pushvalue(L, SR_UV_EMPTY);
  else if (n == 1)
    lua_rawgeti(L, SR_UV_BYTES, (unsigned char)p[0] + 1);
  else
    lua_pushlstring(L, p, n);
}

/* Push those upvalues; returns how many. */
int sr__stream_push_read_upvalues(lua_State *L) {
  int c;
  lua_createtable(L, 256, 0);
  for (c = 0; c < 256; c++) {
    char b = (char)c;
    lua_pushlstring(L, &b, 1);
    lua_rawseti(L, -2, c + 1);
  }
  lua_pushliteral(L, "");
  return 2;
}

/* At EOF or after an error: what is left, then the condition itself. */
static int sr_stream_end(lua_State *L, sr_socket *s) {
  if (s->len > 0) {
    lua_pushlstring(L, s->buf + s->off, s->len);
    sr_stream_consume(s, s->len);
    return 1;
  }
  return sr__fail(L, s->rerr ? s->rerr : UV_EOF);
}

/*
** Length of the numeral at the start of p[0..n), scanned as liolib scans
** for "n": a sign, "0x", digits, a point and digits, an exponent. Returns
** -1 when the bytes end where the numeral might go on (and more may come);
** the byte that ends a numeral is not part of it.
*/
static long sr_numeral_len(const char *p, size_t n, int ended) {
  size_t i = 0, digits = 0;
  int hex = 0;
#define SR_PEEK (i < n ? (unsigned char)p[i] : -1)
#define SR_ACCEPT(a, b) (SR_PEEK == (a) || SR_PEEK == (b) ? (i++, 1) : 0)
#define SR_DIGITS(k, h)                                              \
  while (SR_PEEK != -1 && ((h) ? isxdigit(SR_PEEK) : isdigit(SR_PEEK))) \
    i++, (k)++
  SR_ACCEPT('-', '+');
  if (SR_ACCEPT('0', '0')) {
    if (SR_ACCEPT('x', 'X')) hex = 1;
    else digits = 1;
  }
  SR_DIGITS(digits, hex);
  if (SR_ACCEPT('.', '.')) SR_DIGITS(digits, hex);
  if (digits > 0 && (hex ? SR_ACCEPT('p', 'P') : SR_ACCEPT('e', 'E'))) {
    size_t exp = 0; /* decimal, even after a hex mantissa */
    SR_ACCEPT('-', '+');
    SR_DIGITS(exp, 0);
  }
#undef SR_PEEK
#undef SR_ACCEPT
#undef SR_DIGITS
  return i == n && !ended ? -1 : (long)i;
}

/* The usual numeral in one pass: up to 18 decimal digits, maybe signed,
** ended by a byte that cannot go on a numeral ("\r" in "$3\r\n") or by
** the end of the bytes once no more come. Its length, with its value in
** *v; 0 for anything else, which the general scan above then decides. */
static long sr_decimal_prefix(const char *p, size_t n, int ended,
                              lua_Integer *v) {
  size_t i = (p[0] == '-' || p[0] == '+'), first = i;
  lua_Integer x = 0;
  unsigned char c;
  for (; i < n && i - first < 18; i++) {
    c = (unsigned char)p[i];
    if (c < '0' || c > '9') break;
    x = x * 10 + (c - '0');
  }
  if (i == first || (i == n && !ended)) return 0;
  if (i < n) {
    c = (unsigned char)p[i];
    if ((c >= '0' && c <= '9') || c == '.' || c == 'e' || c == 'E' ||
        ((c == 'x' || c == 'X') && i - first == 1 && p[first] == '0'))
      return 0;
  }
  *v = p[0] == '-' ? -x : x;
  return (long)i;
}

/* Push the numeral p[0..len) converted as Lua converts it; 0 if it is
** not one. Apart from the common case so that the copy it needs does not
** weigh on every read. */
static __attribute__((noinline)) int sr_push_numeral(lua_State *L,
                                                     const char *p, long len) {
  char num[SR_NUMERAL_MAX + 1];
  if (len <= 0 || len > SR_NUMERAL_MAX) return 0;
  memcpy(num, p, (size_t)len);
  num[len] = '\0';
  return lua_stringtonumber(L, num) != 0;
}

/* "n": skip (and consume) white space, then convert the numeral that
** follows. A malformed or overlong numeral is left unread. */
static int sr_stream_number(lua_State *L, sr_socket *s, int ended) {
  lua_Integer v;
  long len;
  size_t ws = 0;
  while (ws < s->len && isspace((unsigned char)s->buf[s->off + ws])) ws++;
  if (ws > 0) sr_stream_consume(s, ws);
  if (s->len == 0) return ended ? sr_stream_end(L, s) : 0;
  if ((len = sr_decimal_prefix(s->buf + s->off, s->len, ended, &v)) > 0) {
    lua_pushinteger(L, v);
    sr_stream_consume(s, (size_t)len);
    return 1;
  }
  len = sr_numeral_len(s->buf + s->off, s->len, ended);
  if (len < 0 && s->len <= SR_NUMERAL_MAX) return 0; /* more may come */
  if (!sr_push_numeral(L, s->buf + s->off, len))
    return sr__fail_msg(L, "not a number", "EPROTO");
  sr_stream_consume(s, (size_t)len);
  return 1;
}

/* read(0) with nothing buffered answers "" or EOF: whether the peer has
** closed is known only once read, so look without taking anything. */
static int sr_stream_peer_closed(sr_socket *s) {
  char c;
  return s->fd >= 0 && s->kind != SR_TTY &&
         recv(s->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

/*
** Try to satisfy one read from the buffer: push the result and return the
** number of values (1, or 3 for nil, message, code), or return 0 when
** more bytes are needed.
*/
int sr__stream_try_read(lua_State *L, sr_socket *s, sr_fmt fmt,
                        size_t count, int keep) {
  int ended = s->eof || s->rerr != 0;
  switch (fmt) {
    case SR_READ_ANY:
      if (s->len > 0) return sr_stream_end(L, s);
      break;
    case SR_READ_COUNT:
      if (count > SR_BUF_MAX) return sr__fail(L, UV_ENOBUFS); /* never fits */
      if (count == 0 && s->len == 0 && !ended && sr_stream_peer_closed(s))
        ended = s->eof = 1;
      if (s->len >= count && (count > 0 || s->len > 0 || !ended)) {
        sr_push_bytes(L, s->buf ? s->buf + s->off : "", count);
        if (count > 0) sr_stream_consume(s, count);
        return 1;
      }
      break;
    case SR_READ_ALL:
      if (s->eof && s->rerr == 0) {
        lua_pushlstring(L, s->buf ? s->buf + s->off : "", s->len);
        if (s->len > 0) sr_stream_consume(s, s->len);
        return 1;
      }
      break;
    case SR_READ_NUMBER:
      return sr_stream_number(L, s, ended);
    case SR_READ_LINE: {
      const char *base = s->buf + s->off;
      const char *nl = s->len > s->scanned ? memchr(base + s->scanned, '\n',
                                                    s->len - s->scanned)
                                           : NULL;
      /* The limit is on a line's bytes without its end, whatever packets
      ** brought them: a too long line is refused whether its end came or
      ** not, and a "\r" without its "\n" yet counts as a possible end. */
      if (nl != NULL) {
        size_t n = (size_t)(nl - base) + 1, k = n;
        size_t content = n - 1 - (n >= 2 && base[n - 2] == '\r');
        if (content > sr_socket_maxline(s))
          return sr__fail_msg(L, "line too long", "ENOBUFS");
        if (!keep) k = content;
        sr_push_bytes(L, base, k);
        sr_stream_consume(s, n);
        return 1;
      }
      s->scanned = s->len;
      if (s->len - (s->len > 0 && base[s->len - 1] == '\r') >
              sr_socket_maxline(s) &&
          !ended)
        return sr__fail_msg(L, "line too long", "ENOBUFS");
      break;
    }
  }
  if (ended) return sr_stream_end(L, s);
  return 0;
}

/*
** Read the formats at arg 2.. in turn, as file:read does: one value each;
** the first that fails ends the call with nil, message, code after the
** values read so far. done counts the formats read: their values sit on
** the stack above the arguments while the task waits for more bytes.
*/
static int sr_stream_read_k(lua_State *L, int status, lua_KContext ctx);

static int sr_stream_read_from(lua_State *L, sr_socket *s, int done,
                               int fresh) {
  int nfmt = lua_gettop(L) - 1 - done; /* 0: no format, whatever comes */
  for (;;) {
    size_t count = 0;
    int keep, n;
    sr_fmt fmt = sr_check_format(L, 2 + done, &count, &keep);
    /* The struct outlives this call (it is freed in a close callback,
    ** and a finalizer may not run the loop: sr__in_finalizer), but a
    ** finalizer run by a push may have closed the socket. */
    if (s->closed) return done + sr__fail(L, UV_EBADF);
    while ((n = sr__stream_try_read(L, s, fmt, count, keep)) == 0) {
      if (!fresh && sr__timedout(sr_socket_loop(s)))
        return done + sr__fail(L, UV_ETIMEDOUT);
      /* A few reads ahead at most, then a wait: the poller's turn lets
      ** the other tasks run when this one's peer sends without end. And
      ** none while another reader waits (one that left read_now set):
      ** the bytes are its, and this caller is told the socket is busy. */
      if (s->read_now && s->reader == NULL &&
          s->read_ahead < SR_READ_AHEAD_MAX && sr_stream_read_now(s)) {
        s->read_ahead++;
        continue;
      }
      s->read_ahead = 0;
      sr__stream_start(s);
      if (s->rerr != 0) continue; /* could not start: report it */
      sr__socket_wait(L, s, &s->reader, SR_TREAD, fresh, done,
                      sr_stream_read_k);
      /* Outside a task the wait returns here once woken; in one, the
      ** task resumes in sr_stream_read_k. */
      fresh = 0;
      if ((s = sr__check_socket(L, 1)) == NULL) return done + 3;
    }
    if (n > 1) return done + n;   /* nil, message, code */
    if (++done >= nfmt) return done;
  }
}

static int sr_stream_read_k(lua_State *L, int status, lua_KContext ctx) {
  sr_socket *s = sr__check_socket(L, 1);
  (void)status;
  if (s == NULL) return (int)ctx + 3;
  return sr_stream_read_from(L, s, (int)ctx, 0);
}

/* s:read(...) on the stream socket at arg 1: s, or NULL when closed
** (misuse still raises: every format is checked before EBADF). */
int sr__stream_read(lua_State *L, sr_socket *s) {
  int top = lua_gettop(L);
  if (top + 2 > LUA_MINSTACK) /* a value per format, 3 to fail */
    luaL_checkstack(L, top + 2, "too many formats");
  /* Not connected (yet): an answer, not a sticky read error, so that the
  ** socket reads once connected. */
  if (s == NULL || !s->connected) {
    int i, keep;
    size_t count;
    for (i = 2; i <= top; i++) sr_check_format(L, i, &count, &keep);
    return sr__fail(L, s == NULL ? UV_EBADF : UV_ENOTCONN);
  }
  return sr_stream_read_from(L, s, 0, 1);
}

/* ---------------------------------------------------------------------- */
/* Writing                                                                */

static void sr_stream_linger_step(sr_socket *s);

/* Bytes on their way out: waiting for the kernel, and gathered. */
static size_t sr_stream_queued(sr_socket *s) {
  return (s->nwrites > 0 ? s->extra->out_bytes : 0) + s->wlen;
}

/*
** sendmsg(2) of bufs[0..n) (at most IOV_MAX of them): the bytes the kernel
** took, or a UV_E* error, UV_EAGAIN when it takes none now. MSG_NOSIGNAL:
** a peer gone away raises no SIGPIPE, whatever the host does with it.
*/
static ssize_t sr_stream_send(sr_socket *s, uv_buf_t *bufs, size_t n) {
  struct msghdr m;
  ssize_t done;
  memset(&m, 0, sizeof m);
  m.msg_iov = (struct iovec *)bufs;
  m.msg_iovlen = n < IOV_MAX ? n : IOV_MAX;
  do
    done = sendmsg(s->fd, &m, MSG_NOSIGNAL);
  while (done < 0 && errno == EINTR);
  if (done >= 0) return done;
  return errno == EWOULDBLOCK ? UV_EAGAIN : -errno;
}

/* A write request done (sent, failed or dropped): its memory goes. */
static void sr_stream_out_done(sr_socket *s, sr_out *o) {
  if (o->owned != NULL)
    free(o->owned);
  else if (sr_socket_loop(s)->L != NULL)
    luaL_unref(sr_socket_loop(s)->L, LUA_REGISTRYINDEX, o->anchor);
  free(o);
  s->nwrites--;
}

/* Drop every write still waiting (a write failed, or the socket is being
** freed). */
void sr__stream_free_queue(sr_socket *s) {
  sr_socket_extra *x = s->extra;
  while (s->nwrites > 0) {
    sr_out *o = x->out;
    x->out = o->next;
    sr_stream_out_done(s, o);
  }
  if (x != NULL) x->out_bytes = 0;
}

/*
** Queue bufs[0..n) behind the writes waiting already: a request that owns
** the gather buffer owned, or whose strings anchor holds. Returns 0 or a
** UV_E* error (then nothing was queued).
*/
static int sr_stream_enqueue(sr_socket *s, const uv_buf_t *bufs, size_t n,
                             char *owned, int anchor) {
  sr_socket_extra *x = sr__socket_extra(s);
  sr_out *o;
  size_t i, bytes = 0;
  int err;
  if (x == NULL ||
      (o = malloc(offsetof(sr_out, bufs) + n * sizeof *bufs)) == NULL)
    return UV_ENOMEM;
  o->next = NULL;
  o->anchor = anchor;
  o->owned = owned;
  o->first = 0;
  o->nbufs = (unsigned)n;
  memcpy(o->bufs, bufs, n * sizeof *bufs);
  for (i = 0; i < n; i++) bytes += bufs[i].len;
  if (s->nwrites == 0) x->out_tail = &x->out;
  *x->out_tail = o;
  s->nwrites++;
  if ((err = sr__stream_watch(s)) < 0) { /* it could never go */
    s->nwrites--;
    *x->out_tail = NULL;
    free(o);
    return err;
  }
  x->out_tail = &o->next;
  x->out_bytes += bytes;
  sr__socket_update_ref(s);
  return 0;
}

/* The FIN, once every queued write is out. */
static void sr_stream_fin(sr_socket *s) {
  if (shutdown(s->fd, SHUT_WR) < 0 && s->werr == 0) s->werr = (int16_t)-errno;
  s->fin_sent = 1;
}

/* The descriptor takes more: send what waits, as much as it takes. */
static void sr_stream_send_queued(sr_socket *s) {
  sr_socket_extra *x = s->extra;
  while (s->nwrites > 0) {
    uv_buf_t iov[SR_IOV_QUEUED];
    size_t n = 0;
    ssize_t done;
    sr_out *o;
    for (o = x->out; o != NULL && n < SR_IOV_QUEUED; o = o->next) {
      unsigned i;
      for (i = o->first; i < o->nbufs && n < SR_IOV_QUEUED; i++)
        iov[n++] = o->bufs[i];
    }
    if ((done = sr_stream_send(s, iov, n)) < 0) {
      if (done == UV_EAGAIN) break;
      if (s->werr == 0) s->werr = (int16_t)done;
      sr__stream_free_queue(s); /* a hole: nothing after it may go */
      break;
    }
    x->out_bytes -= (size_t)done;
    while ((o = x->out) != NULL) { /* (empty buffers go at once) */
      while (o->first < o->nbufs && (size_t)done >= o->bufs[o->first].len)
        done -= (ssize_t)o->bufs[o->first++].len;
      if (o->first < o->nbufs) {
        o->bufs[o->first].base += done;
        o->bufs[o->first].len -= (size_t)done;
        break;
      }
      x->out = o->next;
      sr_stream_out_done(s, o);
    }
  }
  if (s->nwrites == 0 && s->shut && !s->fin_sent) sr_stream_fin(s);
  sr__socket_update_ref(s);
  if (s->closed) {
    sr_stream_linger_step(s);
    return;
  }
  if (s->werr != 0 || sr_stream_queued(s) <= SR_WRITE_HIGH_WATER)
    sr__socket_wake(&s->writer, 0);
}

/* Take s off the loop's list of sockets with gathered bytes. */
static void sr_stream_undirty(sr_socket *s) {
  if (!s->dirty) return;
  sr__sockets_remove(&sr_socket_loop(s)->dirty, s);
  s->dirty = 0;
}

/*
** Send the gathered bytes, and queue what the kernel did not take in a
** request that owns the buffer. Returns 0 or a UV_E* error, which is also
** kept as the socket's write error.
*/
int sr__stream_flush(sr_socket *s) {
  uv_buf_t b;
  ssize_t done = 0;
  int err;
  sr_stream_undirty(s);
  if (s->wlen == 0) return 0;
  b = uv_buf_init(s->wbuf, (unsigned)s->wlen);
  if (s->nwrites == 0) done = sr_stream_send(s, &b, 1); /* else behind */
  if (done == UV_EAGAIN) done = 0;
  err = done < 0 ? (int)done : 0;
  if (err == 0 && (size_t)done < s->wlen) {
    b.base += done;
    b.len -= (size_t)done;
    err = sr_stream_enqueue(s, &b, 1, s->wbuf, LUA_NOREF);
    if (err == 0) s->wbuf = NULL; /* the request has it now */
  }
  if (s->wbuf != NULL && s->wcap == SR_GATHER_FIRST &&
      sr_socket_loop(s)->nspare < SR_GATHER_SPARES)
    sr_socket_loop(s)->spare[sr_socket_loop(s)->nspare++] = s->wbuf;
  else
    free(s->wbuf);
  s->wbuf = NULL;
  s->wlen = s->wcap = 0;
  if (err < 0 && s->werr == 0) s->werr = (int16_t)err;
  return err;
}

/* Gather n bytes from the arguments 2..top into s->wbuf. */
static int sr_stream_gather(lua_State *L, sr_socket *s, size_t n) {
  int i, top = lua_gettop(L);
  sr_loop *lp = sr_socket_loop(s);
  if (n == 0) return 0; /* write(""): there may be no buffer to copy into */
  if (s->wcap == 0 && n > 0 && n <= SR_GATHER_FIRST && lp->nspare > 0) {
    /* a buffer that went out whole: no malloc and free per reply */
    s->wbuf = lp->spare[--lp->nspare];
    s->wcap = SR_GATHER_FIRST;
  } else if (s->wlen + n > s->wcap) {
    size_t cap = s->wcap ? s->wcap * 2 : SR_GATHER_FIRST;
    char *nb;
    while (cap < s->wlen + n) cap *= 2;
    if ((nb = realloc(s->wbuf, cap)) == NULL) return UV_ENOMEM;
    s->wbuf = nb;
    s->wcap = cap;
  }
  if (!s->dirty) { /* (first: bytes gathered always get flushed) */
    if (sr__sockets_add(&lp->dirty, s) < 0) return UV_ENOMEM;
    s->dirty = 1;
  }
  for (i = 2; i <= top; i++) {
    size_t len;
    const char *p = lua_tolstring(L, i, &len);
    memcpy(s->wbuf + s->wlen, p, len);
    s->wlen += len;
  }
  return 0;
}

static int sr_stream_write_k(lua_State *L, int status, lua_KContext ctx) {
  int fresh = (status == LUA_OK);
  for (;;) {
    sr_socket *s = sr__check_socket(L, 1);
    if (s == NULL) return 3;
    if (s->werr != 0) return sr__fail(L, s->werr);
    if (sr_stream_queued(s) <= SR_WRITE_HIGH_WATER) {
      lua_settop(L, 1);
      return 1;
    }
    if (!fresh &&
        sr__timedout(sr_socket_loop(s)))
      return sr__fail(L, UV_ETIMEDOUT);
    sr__socket_wait(L, s, &s->writer, SR_TWRITE, fresh, ctx, sr_stream_write_k);
    fresh = 0;
  }
}

/* Queue bufs[0..n) (the tail of arguments first..top), anchoring the
** strings in the registry until they are sent. The anchor is made first:
** it may raise (out of memory), and then nothing is to be freed. */
static int sr_stream_queue(lua_State *L, sr_socket *s, uv_buf_t *bufs,
                           size_t n, int first, int top) {
  int i, err, anchor;
  if (first == top) {
    lua_pushvalue(L, top);
  } else {
    lua_createtable(L, top - first + 1, 0);
    for (i = first; i <= top; i++) {
      lua_pushvalue(L, i);
      lua_rawseti(L, -2, i - first + 1);
    }
  }
  anchor = luaL_ref(L, LUA_REGISTRYINDEX);
  if ((err = sr_stream_enqueue(s, bufs, n, NULL, anchor)) < 0)
    luaL_unref(L, LUA_REGISTRYINDEX, anchor);
  return err;
}

#define SR_IOV_STACK 16
/* A uv_buf_t holds an unsigned int length: longer strings go out in pieces
** of this size. */
#define SR_BUF_PIECE ((size_t)1 << 30)

/* The buffers s:write's arguments 2..top take: one each, unless total says
** that one of them may be longer than a piece. */
static size_t sr_stream_nbufs(lua_State *L, int top, size_t total) {
  size_t n = 0, len;
  int i;
  if (total <= SR_BUF_PIECE) return (size_t)(top - 1);
  for (i = 2; i <= top; i++) {
    lua_tolstring(L, i, &len);
    n += len == 0 ? 1 : (len + SR_BUF_PIECE - 1) / SR_BUF_PIECE;
  }
  return n;
}

/* s:write(...) on the stream socket s at arg 1 (NULL when closed), whose
** arguments are strings already, total bytes of them (sr_socket_write). */
int sr__stream_write(lua_State *L, sr_socket *s, size_t total) {
  int i, n = lua_gettop(L), nb = n - 1, first = 0, err;
  uv_buf_t stackbufs[SR_IOV_STACK], *bufs = stackbufs;
  size_t len, nbufs, k;
  ssize_t done;
  if (s == NULL) return sr__fail(L, UV_EBADF);
  if (s->kind == SR_TTY) return sr__fail(L, UV_ENOTSUP); /* read only */
  if (!s->connected) return sr__fail(L, UV_ENOTCONN); /* not a sticky error */
  if (s->writer != NULL) /* refuse before a byte of ours goes out */
    return luaL_error(L, "socket is busy: another task is already writing "
                         "on it");
  if (s->werr != 0) return sr__fail(L, s->werr);
  if (s->shut) return sr__fail(L, UV_EPIPE);
  if (nb == 0) {
    lua_settop(L, 1);
    return 1;
  }
  /* Inside a task, a small write is gathered: replies made while working
  ** through buffered input leave together, in one write per socket, when
  ** the task gives control back to the loop (sr__loop_flush). */
  if (sr_socket_loop(s)->current != NULL && total <= SR_GATHER_MAX &&
      s->wlen + total <= SR_GATHER_LIMIT) {
    if ((err = sr_stream_gather(L, s, total)) < 0) return sr__fail(L, err);
    if (sr_stream_queued(s) > SR_WRITE_HIGH_WATER)
      return sr_stream_write_k(L, LUA_OK, 0);
    lua_settop(L, 1);
    return 1;
  }
  /* otherwise what was gathered goes first, then this, straight away */
  if ((err = sr__stream_flush(s)) < 0) return sr__fail(L, err);
  nbufs = sr_stream_nbufs(L, n, total);
  if (nbufs > INT_MAX) return sr__fail(L, UV_E2BIG);
  if (nbufs > SR_IOV_STACK) /* a queued write copies it; Lua frees it */
    bufs = lua_newuserdatauv(L, sizeof(uv_buf_t) * nbufs, 0);
  total = 0;
  for (i = 0, k = 0; i < nb; i++) {
    const char *p = lua_tolstring(L, i + 2, &len);
    total += len;
    do {
      size_t piece = len < SR_BUF_PIECE ? len : SR_BUF_PIECE;
      bufs[k++] = uv_buf_init((char *)p, (unsigned)piece);
      p += piece;
      len -= piece;
    } while (len > 0);
  }
  /* (behind writes queued already, if any: sr_stream_queued is below
  ** the high-water mark, or this task would have waited) */
  done = s->nwrites == 0 ? sr_stream_send(s, bufs, nbufs) : UV_EAGAIN;
  if (done == UV_EAGAIN) done = 0;
  err = done < 0 ? (int)done : 0;
  if (err == 0 && (size_t)done < total) {
    /* skip what went out, then queue the rest */
    while ((size_t)done >= bufs[first].len) done -= bufs[first++].len;
    bufs[first].base += done;
    bufs[first].len -= (size_t)done;
    /* the strings from the first one not sent are anchored; with pieces,
    ** bufs and arguments do not line up: all of them are */
    /* the stream has a hole if some went out and the rest cannot follow:
    ** the error is sticky then, set before the queueing, which may raise */
    int sent = first > 0 || done > 0;
    if (sent) s->werr = UV_ENOMEM;
    err = sr_stream_queue(L, s, bufs + first, nbufs - (size_t)first,
                          nbufs == (size_t)nb ? first + 2 : 2, n);
    if (sent) s->werr = (int16_t)(err < 0 ? err : 0);
  }
  lua_settop(L, n);
  if (err < 0) {
    if (done < 0) s->werr = (int16_t)err;
    return sr__fail(L, err);
  }
  if (sr_stream_queued(s) > SR_WRITE_HIGH_WATER)
    return sr_stream_write_k(L, LUA_OK, 0);
  lua_settop(L, 1);
  return 1;
}

/* ---------------------------------------------------------------------- */
/* Closing with writes still going out, or bytes unread                   */

/*
** A socket the script closed while its writes still go out, or with bytes
** from the peer unread (socket.c), closes as HTTP servers close a
** connection (a "lingering close"): FIN once the writes are out, and
** meanwhile what the peer sends is read and dropped, until it ends too or
** goes quiet. Two reasons. The kernel resets a connection closed with
** bytes unread, and a reset makes the peer drop what it has not read yet
** of ours: the end of what we wrote, the reply to the request it was still
** sending or pipelining. And a peer that answers what it reads (an echo, a
** client pipelining requests) stops reading when its answers are not
** read, and then our flush would wait on it. The flush's linger timer
** bounds it all in time (socket.c); when nothing was queued, a peer that
** goes on sending more than SR_CLOSE_DRAIN_MAX is not reading us either,
** and gets the reset.
*/

/* What a read brought a lingering socket: dropped, within the budget. */
static void sr_stream_drained(sr_socket *s, ssize_t nread) {
  sr_linger *lg;
  if (nread < 0) {
    sr_stream_stop(s); /* EOF (it may still read) or an error */
  } else if ((lg = sr_socket_linger(s)) != NULL) {
    if (lg->drain_left < (uint64_t)nread) {
      sr__socket_finish_close(s); /* what it sends next meets a reset */
      return;
    }
    lg->drain_left -= (uint64_t)nread;
  }
  sr_stream_linger_step(s);
}

void sr__stream_linger(sr_socket *s) {
  /* linger 0 asked for a reset: it comes once the writes are out */
  if (s->abortive) return;
  if (!s->shut) { /* the FIN goes once the queued writes are out */
    s->shut = 1;
    if (s->nwrites == 0) sr_stream_fin(s);
  }
  /* (after a read error too: one of ours, ENOMEM say, leaves the peer
  ** sending; after its own, the drain's first read ends at once) */
  if (!s->reading && !s->eof) {
    s->reading = 1;
    if (sr__stream_watch(s) < 0) s->reading = 0;
  }
  sr_stream_linger_step(s);
}

/* Where a lingering close stands, after each of its events: a write or
** the FIN done, or a read (bytes, which start the quiet wait again once
** the FIN is out; the end of the stream; an error). */
static void sr_stream_linger_step(sr_socket *s) {
  if (!s->closed || s->closing) return;
  if (s->werr != 0) { /* a write failed: there is nothing to deliver */
    sr__socket_finish_close(s);
    return;
  }
  if (s->nwrites > 0 || (s->shut && !s->fin_sent)) return; /* still going */
  if (!s->shut || !s->reading) /* no FIN to send, or the peer has ended */
    sr__socket_finish_close(s);
  else
    sr__socket_linger_quiet(s);
}

/* Half-close: the FIN goes once the queued writes are out. */
int sr__stream_shutdown(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  int err;
  if (s == NULL) return 3;
  if (s->kind == SR_DGRAM) {
    if (shutdown(s->fd, SHUT_WR) < 0) return sr__fail(L, UV_ENOTCONN);
    lua_pushboolean(L, 1);
    return 1;
  }
  if (s->shut) {
    lua_pushboolean(L, 1);
    return 1;
  }
  if (!s->connected || s->kind == SR_TTY) return sr__fail(L, UV_ENOTCONN);
  if ((err = sr__stream_flush(s)) < 0) return sr__fail(L, err);
  if (s->nwrites == 0 && shutdown(s->fd, SHUT_WR) < 0)
    return sr__fail(L, -errno);
  s->fin_sent = s->nwrites == 0;
  s->shut = 1;
  lua_pushboolean(L, 1);
  return 1;
}

/* ---------------------------------------------------------------------- */
/* The poll callback                                                      */

/* A connect under way has ended (connect_status 1): how. */
static void sr_stream_connected(sr_socket *s) {
  int soerr = 0;
  socklen_t len = sizeof soerr;
  if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0) soerr = errno;
  s->connect_status = 2;
  s->cresult = (int16_t)-soerr;
  sr__socket_wake(&s->writer, 0);
}

static void sr_stream_poll_cb(uv_poll_t *h, int status, int events) {
  sr_socket *s = h->data;
  if (status < 0) {
    /* An error on the descriptor (a reset, a refused connect): libuv
    ** stopped watching it. The calls below meet the error itself. */
    s->poll_events = 0;
    events = UV_READABLE | UV_WRITABLE;
  }
  if (s->listening) {
    if (events & UV_READABLE) sr__socket_wake(&s->reader, 0);
  } else {
    if (events & UV_WRITABLE) {
      if (s->connect_status == 1)
        sr_stream_connected(s);
      else if (s->nwrites > 0)
        sr_stream_send_queued(s);
    }
    if ((events & UV_READABLE) && s->reading && !s->closing) {
      ssize_t n = sr_stream_read_fd(s);
      if (n != 0) {
        if (s->closed)
          sr_stream_drained(s, n);
        else
          sr_stream_got(s, n);
      }
    }
  }
  sr__stream_watch(s);
}
