/*
** socket.c -- the socket object: creation over its own descriptor and a
** libuv poll handle, lifetime (close, __gc, __close), waiting on a socket,
** options, bind, listen, accept, connect, addresses, timeouts and
** tostring.
*/

#define _GNU_SOURCE /* accept4 */

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "internal.h"

/*
** Lifetime. The userdata holds a pointer to a malloc'd sr_socket (libuv
** needs the handle memory until the close callback, which may come after
** the userdata is collected). Closing sets that pointer to NULL first, so
** every later call on the object sees a closed socket (EBADF).
*/
static void sr_socket_release(sr_socket *s) {
  sr_loop *lp = sr_socket_loop(s);
  lp->nsockets--;
  /* the loop's read buffer may still be lent to it (stream.c): a released
  ** socket has nothing there to reclaim, and its memory goes now */
  if (lp->lent == s) lp->lent = NULL;
  if (!s->borrowed) free(s->buf);
  free(s->wbuf);
  sr__stream_free_queue(s); /* (at teardown: what a linger had left) */
  if (s->extra != NULL) free(s->extra->path);
  free(s->extra);
}

static void sr_socket_free(sr_socket *s) {
  sr_socket_release(s);
  free(s);
}

void sr__socket_close_cb(uv_handle_t *h) { sr_socket_free(h->data); }

/* (a kept handle's socket was released when it was kept) */
static void sr_kept_close_cb(uv_handle_t *h) { free(h->data); }

/*
** Kept handles. uv_poll_init costs three syscalls (an epoll_ctl ADD and
** DEL that check the descriptor, an ioctl that makes it non-blocking, as
** accept4 has made it already). A connection closed with a handle
** therefore keeps its struct, the handle stopped, for the next connection
** accepted on the same descriptor number: the kernel hands out the lowest
** free one, so a server that accepts and closes reuses a few numbers.
**
** A kept handle is never closed while the loop runs: libuv's stop and
** close do an epoll_ctl DEL on its number, which may be another live
** socket's by then (at teardown all go). So a number has one kept handle
** at most, taken at close while its descriptor is still open; a socket
** closed while its number's slot is full closes its handle as usual. The
** struct is reused only after the loop's next poll (sr__socket_reap),
** when no call that had the closed socket in hand is still running.
*/
static void sr_socket_reap_soon(sr_loop *lp);

#define SR_KEPT_MAX 256     /* handles kept at most */
#define SR_KEPT_FD_MAX 4096 /* for descriptor numbers below this */

/* Keep the handle of s, being closed, for its descriptor number (still
** open); or 0. */
static int sr_socket_keep(sr_loop *lp, sr_socket *s) {
  int fd = s->fd;
  if ((s->kind != SR_TCP && s->kind != SR_PIPE) || s->listening || fd < 0 ||
      fd >= SR_KEPT_FD_MAX || lp->nkept >= SR_KEPT_MAX ||
      lp->L == NULL) /* tearing down: sr__socket_drop_kept has run */
    return 0;
  if (fd >= lp->keptcap) {
    int cap = lp->keptcap > 0 ? lp->keptcap : 64;
    sr_socket **v;
    while (cap <= fd) cap *= 2;
    if ((v = realloc(lp->kept, sizeof *v * (size_t)cap)) == NULL) return 0;
    memset(v + lp->keptcap, 0, sizeof *v * (size_t)(cap - lp->keptcap));
    lp->kept = v;
    lp->keptcap = cap;
  }
  if (lp->kept[fd] != NULL || sr__sockets_add(&lp->retired, s) < 0)
    return 0;
  lp->kept[fd] = s;
  lp->nkept++;
  if (uv_is_active(&s->h.handle)) uv_poll_stop(&s->h.poll); /* fd open */
  uv_unref(&s->h.handle); /* as a new handle is (sr_socket_handle_made) */
  sr_socket_reap_soon(lp);
  return 1;
}

/* The struct kept for descriptor fd, cleared but for its handle (stopped,
** made: polled), for sr_socket_make to fill in; or NULL. */
static sr_socket *sr_socket_take_kept(sr_loop *lp, int fd) {
  sr_socket *s;
  if (fd >= lp->keptcap || (s = lp->kept[fd]) == NULL || !s->kept_ready)
    return NULL;
  lp->kept[fd] = NULL;
  lp->nkept--;
  memset(s, 0, offsetof(sr_socket, h));
  s->polled = 1;
  return s;
}

/* Release what the sockets closed since the last poll held. */
static void sr_socket_retire(sr_loop *lp) {
  while (lp->retired.n > 0) {
    sr_socket *s = lp->retired.v[--lp->retired.n];
    sr_socket_release(s);
    s->kept_ready = 1;
  }
}

/* At teardown, before the loop's handles are closed: the kept ones. */
void sr__socket_drop_kept(sr_loop *lp) {
  int fd;
  sr_socket_retire(lp);
  for (fd = 0; fd < lp->keptcap; fd++)
    if (lp->kept[fd] != NULL)
      uv_close(&lp->kept[fd]->h.handle, sr_kept_close_cb);
  free(lp->kept);
  free(lp->retired.v);
  lp->kept = NULL;
  lp->retired.v = NULL;
  lp->keptcap = lp->nkept = lp->retired.cap = 0;
}

/*
** A connection that never had a handle (sr__socket_handle) has no close
** callback: it is freed after the loop's next poll, when no call that had
** it in hand is still running, or at teardown. Retired ones are kept then.
*/
void sr__socket_reap(sr_loop *lp) {
  while (lp->unpolled.n > 0) sr_socket_free(lp->unpolled.v[--lp->unpolled.n]);
  sr_socket_retire(lp);
  uv_check_stop(&lp->reap);
  uv_idle_stop(&lp->reap_idle);
}

static void sr_socket_reap_cb(uv_check_t *c) { sr__socket_reap(c->data); }
static void sr_socket_reap_idle_cb(uv_idle_t *i) { (void)i; }

/* Reap after the next poll, and have one come even if nothing else keeps
** the loop alive (a socket closed outside sr.run, by a finalizer say), as
** a closing handle would: the ref'd idle handle keeps the loop going
** without blocking in the poll until the check has run. */
static void sr_socket_reap_soon(sr_loop *lp) {
  uv_check_start(&lp->reap, sr_socket_reap_cb);
  uv_idle_start(&lp->reap_idle, sr_socket_reap_idle_cb);
}

void sr__socket_loop_init(sr_loop *lp) {
  uv_check_init(&lp->uv, &lp->reap);
  lp->reap.data = lp;
  uv_unref((uv_handle_t *)&lp->reap);
  uv_idle_init(&lp->uv, &lp->reap_idle);
}

/* Add s to the list l (0, or UV_ENOMEM); take it off again. */
int sr__sockets_add(sr_sockets *l, sr_socket *s) {
  if (l->n == l->cap) {
    int cap = l->cap ? l->cap * 2 : 16;
    sr_socket **v = realloc(l->v, sizeof *v * (size_t)cap);
    if (v == NULL) return UV_ENOMEM;
    l->v = v;
    l->cap = cap;
  }
  l->v[l->n++] = s;
  return 0;
}

void sr__sockets_remove(sr_sockets *l, sr_socket *s) {
  int i = l->n; /* (the newest first: that is the one usually taken off) */
  while (i-- > 0) {
    if (l->v[i] == s) {
      l->v[i] = l->v[--l->n];
      return;
    }
  }
}

/* A handle just made (poll or tty): it finds s, and keeps no loop alive
** until a task waits on it (sr__socket_update_ref). */
static void sr_socket_handle_made(sr_socket *s) {
  s->h.handle.data = s;
  s->polled = 1;
  uv_unref(&s->h.handle);
}

/* The handle of a socket on its own descriptor (all but standard input),
** which is made now, or by stream.c when first watched. */
int sr__socket_handle(sr_socket *s) {
  int err;
  if (s->polled) return 0;
  err = uv_poll_init_socket(&sr_socket_loop(s)->uv, &s->h.poll, s->fd);
  if (err < 0) return err;
  sr_socket_handle_made(s);
  return 0;
}

/* Have libuv watch s's descriptor for the events want (UV_READABLE,
** UV_WRITABLE), calling cb; nothing when it does already. Every change
** costs an epoll_ctl or two. Returns 0 or a UV_E* error. */
int sr__socket_poll(sr_socket *s, int want, uv_poll_cb cb) {
  int err;
  if (s->closing || want == s->poll_events) return 0;
  if ((err = sr__socket_handle(s)) < 0) return err;
  err = want != 0 ? uv_poll_start(&s->h.poll, want, cb)
                  : uv_poll_stop(&s->h.poll);
  if (err == 0) s->poll_events = (uint8_t)want;
  return err;
}

/* s's rarely set state, made with the defaults on first use; NULL when
** out of memory. */
sr_socket_extra *sr__socket_extra(sr_socket *s) {
  sr_socket_extra *x = s->extra;
  if (x == NULL && (x = malloc(sizeof *x)) != NULL) {
    x->path = NULL;
    x->linger = NULL;
    x->maxline = SR_DEFAULT_MAXLINE;
    x->timeout_ms[0] = x->timeout_ms[1] = x->timeout_ms[2] = SR_NO_TIMEOUT;
    x->out = NULL;
    x->out_tail = &x->out;
    x->out_bytes = 0;
    s->extra = x;
  }
  return x;
}

/* The socket's timeout of that kind, in ms or SR_NO_TIMEOUT. */
static uint32_t sr_socket_timeout_ms(const sr_socket *s, int which) {
  return s->extra != NULL ? s->extra->timeout_ms[which] : SR_NO_TIMEOUT;
}

/* A handle is referenced (keeps the loop alive) only while a task waits
** on it or writes are queued or being flushed: an idle socket nobody waits
** on does not keep a script from ending, nor does one that lingers only
** for bytes unread (its data is with the kernel already). */
void sr__socket_update_ref(sr_socket *s) {
  int want =
      !s->closing && (s->reader != NULL || s->writer != NULL ||
                      s->nwrites > 0 || (s->flushing && !s->unread_only));
  if (want == (int)s->nbio_ref) return;
  if (!s->polled && (!want || sr__socket_handle(s) < 0)) return;
  if (want)
    uv_ref(&s->h.handle);
  else
    uv_unref(&s->h.handle);
  s->nbio_ref = (unsigned)want;
}

/* Start closing the handle. Called once the Lua side is done with it; data
** still queued for writing is flushed first (stream.c closes after). */
static void sr_socket_uv_close(sr_socket *s) {
  if (s->closing) return;
  s->closing = 1;
  if (s->flushing) {
    s->flushing = 0;
    sr_socket_loop(s)->nflushing--;
  }
  /* a path we bound for a server or a datagram socket is ours to remove */
  if (s->extra != NULL && s->extra->path != NULL &&
      (s->listening || s->kind == SR_DGRAM))
    unlink(s->extra->path);
  if (s->kind == SR_TTY) {
    sr__tty_release(s);
    uv_close(&s->h.handle, sr__socket_close_cb);
    return;
  }
  if (!s->polled) {
    sr_loop *lp = sr_socket_loop(s);
    if (sr__sockets_add(&lp->unpolled, s) == 0) {
      sr_socket_reap_soon(lp);
      close(s->fd);
      return;
    }
    /* out of memory: made now, the handle is closed the libuv way (and
    ** if it cannot be made, the struct is lost rather than freed under a
    ** caller) */
    if (sr__socket_handle(s) < 0) {
      close(s->fd);
      return;
    }
  }
  if (!sr_socket_keep(sr_socket_loop(s), s))
    uv_close(&s->h.handle, sr__socket_close_cb); /* which stops the poll */
  close(s->fd); /* uv_poll does not own the descriptor */
}

/* Drop the linger timer of a closed socket, if it has one (loop.c too). */
void sr__socket_linger_stop(sr_socket *s) {
  sr_linger *lg = sr_socket_linger(s);
  if (lg != NULL) {
    uv_close((uv_handle_t *)&lg->timer, sr__free_close_cb);
    s->extra->linger = NULL;
  }
}

/* The flush of a closed socket took too long, or its peer went quiet
** after the FIN: drop what is left. */
static void sr_linger_cb(uv_timer_t *timer) {
  sr_socket *s = timer->data;
  sr__socket_linger_stop(s);
  sr_socket_uv_close(s);
}

/* The FIN is out and the peer has not ended: close once it has sent
** nothing for SR_CLOSE_QUIET_MS, within the flush's own bound. Each read
** while lingering starts the wait again (stream.c). */
void sr__socket_linger_quiet(sr_socket *s) {
  sr_linger *lg = sr_socket_linger(s);
  uint64_t now, left;
  if (lg == NULL) { /* nothing bounds the wait: do not wait */
    sr__socket_finish_close(s);
    return;
  }
  now = uv_now(&sr_socket_loop(s)->uv);
  left = lg->deadline > now ? lg->deadline - now : 0;
  uv_timer_start(&lg->timer, sr_linger_cb,
                 left < SR_CLOSE_QUIET_MS ? left : SR_CLOSE_QUIET_MS, 0);
}

void sr__socket_close(sr_socket *s) {
  int unread;
  if (s->closed) return;
  s->closed = 1;
  /* Wake waiters exactly once; their retry finds the socket closed. */
  sr__socket_wake(&s->reader, UV_EBADF);
  sr__socket_wake(&s->writer, UV_EBADF);
  if (s->kind == SR_DGRAM) {
    sr_socket_uv_close(s);
    return;
  }
  unread = sr__stream_unread(s); /* before the release frees our buffer */
  sr__stream_release(s);
  if ((s->nwrites > 0 && s->werr == 0) || (unread && !s->abortive)) {
    /* Flush what is queued first, as a file's close does, but not for
    ** ever: a peer that stops reading gets the write timeout (or
    ** SR_CLOSE_LINGER_MS) and then the rest is dropped. Bytes left
    ** unread linger too, even with nothing queued: close(2) would answer
    ** them with a reset, which makes the peer drop what it has not read
    ** yet of ours, the reply to its request. That linger does not keep
    ** the loop alive: an exit resets as close(2) would have. */
    uint32_t t = sr_socket_timeout_ms(s, SR_TWRITE);
    uint64_t ms = t != SR_NO_TIMEOUT ? t : SR_CLOSE_LINGER_MS;
    sr_loop *lp = sr_socket_loop(s);
    sr_socket_extra *x = sr__socket_extra(s);
    sr_linger *lg = x != NULL ? malloc(sizeof *lg) : NULL;
    s->flushing = 1; /* sr.shutdown waits for these (core.counts) */
    s->unread_only = s->nwrites == 0;
    lp->nflushing++;
    if (lg != NULL) { /* (without, nothing bounds it: linger_quiet) */
      x->linger = lg;
      uv_timer_init(&lp->uv, &lg->timer);
      lg->timer.data = s;
      lg->deadline = uv_now(&lp->uv) + ms;
      lg->drain_left = s->unread_only ? SR_CLOSE_DRAIN_MAX : UINT64_MAX;
      uv_timer_start(&lg->timer, sr_linger_cb, ms, 0);
      uv_unref((uv_handle_t *)&lg->timer); /* the socket may be */
    }
    sr__socket_update_ref(s); /* a flush keeps the loop alive */
    sr__stream_linger(s);     /* and stream.c ends it */
    sr__stream_watch(s);      /* (the release left the poll as it was) */
    return;
  }
  sr_socket_uv_close(s);
}

/* Called by stream.c when the last queued write of a closed socket ends. */
void sr__socket_finish_close(sr_socket *s) {
  if (!s->closed) return;
  sr__socket_linger_stop(s);
  sr_socket_uv_close(s);
}

/*
** A socket's userdata: a tag, then the socket (NULL once closed). The tag
** is the address of a variable of ours, and only C code makes full
** userdata, so it tells a socket from any other value without fetching
** the metatable (or, as luaL_checkudata does, looking it up by name) on
** every read and write.
*/
static const char sr_socket_tag[] = SR_SOCKET_MT;

typedef struct {
  const char *tag;
  sr_socket *s;
} sr_socket_box;

sr_socket **sr__socket_slot(lua_State *L, int arg) {
  sr_socket_box *b = lua_touserdata(L, arg);
  if (b == NULL || lua_rawlen(L, arg) != sizeof *b || b->tag != sr_socket_tag)
    luaL_typeerror(L, arg, SR_SOCKET_MT);
  return &b->s;
}

sr_socket *sr__to_socket(lua_State *L, int arg) {
  return *sr__socket_slot(L, arg);
}

/* The socket at arg, or NULL after pushing nil, "socket is closed". */
sr_socket *sr__check_socket(lua_State *L, int arg) {
  sr_socket *s = sr__to_socket(L, arg);
  if (s == NULL) sr__fail(L, UV_EBADF);
  return s;
}

/* Timeouts are kept in milliseconds (waits are timed in them anyway), up
** to 49 days; seconds < 0 mean none. */
static uint32_t sr_timeout_ms(double sec) {
  double ms = sec * 1000.0 + 0.5;
  if (sec < 0) return SR_NO_TIMEOUT;
  return ms < (double)SR_NO_TIMEOUT ? (uint32_t)ms : SR_NO_TIMEOUT - 1;
}

/* The socket's timeout of that kind in seconds, < 0 for none. */
static double sr_socket_timeout(const sr_socket *s, int which) {
  uint32_t ms = sr_socket_timeout_ms(s, which);
  return ms == SR_NO_TIMEOUT ? -1 : ms / 1000.0;
}

/* Take t off s's reader or writer slot (task.c, when its wait ends). */
void sr__socket_detach(sr_task *t) {
  sr_socket *s = t->wait_on;
  if (s->reader == t) s->reader = NULL;
  if (s->writer == t) s->writer = NULL;
  sr__socket_update_ref(s);
}

/* Make the running context wait on s in the given slot (reader/writer),
** for at most timeout seconds (< 0: no bound). One task per slot: a
** second reader would get bytes meant for the first, so it is refused. */
static int sr_socket_wait_for(lua_State *L, sr_socket *s, sr_task **slot,
                              double timeout, int fresh, lua_KContext ctx,
                              lua_KFunction k) {
  sr_task *t = sr__self(L, sr_socket_loop(s));
  if (*slot != NULL && *slot != t)
    luaL_error(L, "socket is busy: another task is already %s on it",
               slot == &s->reader ? "reading" : "writing");
  *slot = t;
  t->wait_on = s;
  t->waits_on = SR_WAIT_SOCKET;
  if (s->listening) sr__stream_watch(s); /* readable, for this accept */
  sr__socket_update_ref(s);
  return sr__wait(L, t, timeout, fresh, ctx, k);
}

/* The same, bounded by the socket's timeout of that kind. */
int sr__socket_wait(lua_State *L, sr_socket *s, sr_task **slot, int which,
                    int fresh, lua_KContext ctx, lua_KFunction k) {
  return sr_socket_wait_for(L, s, slot, sr_socket_timeout(s, which), fresh,
                            ctx, k);
}

void sr__socket_wake(sr_task **slot, int status) {
  if (*slot != NULL) sr__wake(*slot, status);
}

/* Bytes to allocate for a socket of this kind: the struct up to its
** handle, and that handle. */
static size_t sr_socket_size(sr_kind kind) {
  size_t h = kind == SR_TTY ? sizeof(((sr_socket *)0)->h) : sizeof(uv_poll_t);
  return offsetof(sr_socket, h) + h;
}

/* A new socket object (closed, so valid) at the top of the stack, with its
** metatable, before anything can fail, as liolib's newprefile does; the
** slot for its struct. */
static sr_socket **sr_socket_push_box(lua_State *L) {
  sr_socket_box *b = lua_newuserdatauv(L, sizeof *b, 0);
  b->tag = sr_socket_tag;
  b->s = NULL;
  /* the metatable by its address key: by name costs a string lookup */
  lua_rawgetp(L, LUA_REGISTRYINDEX, sr_socket_tag);
  lua_setmetatable(L, -2);
  return &b->s;
}

/*
** The struct of a new socket of that kind over descriptor fd, which it
** then owns (closing it if this fails), or over a fresh one (fd -1); NULL
** with *errp set on failure. A connection just accepted gets its handle
** later (sr__socket_handle): it may be answered and closed without one.
*/
static sr_socket *sr_socket_make(sr_loop *lp, sr_kind kind, int family,
                                 int fd, int *errp) {
  /* an accepted descriptor may find a handle kept for its number */
  sr_socket *s = fd >= 0 ? sr_socket_take_kept(lp, fd) : NULL;
  int err = 0, inited = 0; /* inited: a tty handle registered, even if err */
  int accepted = fd >= 0;
  if (s == NULL && (s = calloc(1, sr_socket_size(kind))) == NULL) {
    if (accepted) close(fd);
    *errp = UV_ENOMEM;
    return NULL;
  }
  s->h.handle.loop = &lp->uv; /* libuv's init sets it again */
  s->kind = kind;
  s->family = family;
  s->fd = fd;
  switch (kind) {
    case SR_TCP:
    case SR_PIPE:
      if (accepted) break; /* its handle comes when first watched */
      s->fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (s->fd < 0)
        err = -errno;
      else if ((err = sr__socket_handle(s)) < 0)
        close(s->fd);
      break;
    case SR_DGRAM: err = sr__dgram_init(s, family); break;
    case SR_TTY: err = sr__tty_init(s, &inited); break;
  }
  if (err < 0 && inited) {
    /* the handle is in the loop already: close it the libuv way, so its
    ** memory goes in the close callback */
    s->h.handle.data = s;
    lp->nsockets++;
    s->closed = 1;
    sr_socket_uv_close(s);
    *errp = err;
    return NULL;
  }
  if (err < 0) {
    free(s);
    *errp = err;
    return NULL;
  }
  if (kind == SR_TTY) sr_socket_handle_made(s);
  lp->nsockets++;
  return s;
}

/*
** Out of descriptors (EMFILE, ENFILE): sockets dropped unclosed may hold
** them until the collector finalizes them, and the collector sees only
** their small userdata, so it may be far behind. Collect in full and say
** whether to try again: not for a second after a collection that freed
** none (a server at its limit with live connections retries its accept
** every 50 ms). Inside a finalizer lua_gc does nothing and answers -1.
*/
static int sr_reclaim_fds(lua_State *L, sr_loop *lp, int err) {
  if ((err != UV_EMFILE && err != UV_ENFILE) ||
      (lp->futile != 0 && uv_now(&lp->uv) - lp->futile < 1000))
    return 0;
  return lua_gc(L, LUA_GCCOLLECT) >= 0;
}

/* The try after that collection failed with err. */
static void sr_reclaim_failed(sr_loop *lp, int err) {
  if (err == UV_EMFILE || err == UV_ENFILE) {
    uint64_t now = uv_now(&lp->uv);
    lp->futile = now != 0 ? now : 1;
  }
}

/* New socket object at the top of the stack, and its struct; NULL (the
** object closed) with *errp set on failure. */
static sr_socket *sr_socket_push(lua_State *L, sr_loop *lp, sr_kind kind,
                                 int family, int *errp) {
  sr_socket **slot = sr_socket_push_box(L);
  return *slot = sr_socket_make(lp, kind, family, -1, errp);
}

static int sr_socket_new(lua_State *L) {
  static const char *const types[] = {"stream", "dgram", NULL};
  sr_loop *lp = sr_getloop(L);
  int family = sr__check_family(L, 1);
  int type, err = 0;
  sr_kind kind;
  lua_Integer proto = luaL_optinteger(L, 3, 0);
  if (lua_type(L, 2) == LUA_TNUMBER) {
    lua_Integer t = lua_tointeger(L, 2);
    luaL_argcheck(L, t == SOCK_STREAM || t == SOCK_DGRAM, 2, "unknown type");
    type = (int)t;
  } else {
    type = sr__check_name(L, 2, types, "type") == 0 ? SOCK_STREAM : SOCK_DGRAM;
  }
  luaL_argcheck(
      L,
      proto == 0 ||
          (family != AF_UNIX && type == SOCK_STREAM && proto == IPPROTO_TCP) ||
          (family != AF_UNIX && type == SOCK_DGRAM && proto == IPPROTO_UDP),
      3, "unsupported protocol");
  kind = type == SOCK_DGRAM ? SR_DGRAM : family == AF_UNIX ? SR_PIPE : SR_TCP;
  if (sr_socket_push(L, lp, kind, family, &err) == NULL) {
    if (!sr_reclaim_fds(L, lp, err)) return sr__fail(L, err);
    lua_pop(L, 1);
    if (sr_socket_push(L, lp, kind, family, &err) == NULL) {
      sr_reclaim_failed(lp, err);
      return sr__fail(L, err);
    }
  }
  return 1;
}

sr_socket *sr__new_socket(lua_State *L, sr_loop *lp, sr_kind kind, int family) {
  int err = 0;
  return sr_socket_push(L, lp, kind, family, &err);
}

/* close(), __gc and __close: one idempotent function (liolib's f_gc). */
static int sr_socket_close(lua_State *L) {
  sr__socket_close_slot(sr__socket_slot(L, 1));
  lua_pushboolean(L, 1);
  return 1;
}

/* What s:close() does, given the socket's slot in its userdata. */
void sr__socket_close_slot(sr_socket **slot) {
  sr_socket *s = *slot;
  if (s == NULL) return;
  *slot = NULL;
  sr__socket_close(s);
}

/*
** A socket a task waits on is reachable from that task's coroutine, so a
** finalized socket with a waiter means that the whole state is closing
** (lua_close: nobody is woken, no coroutine may run now, the loop's
** teardown closes the handle), or that a script closed the waiting task's
** coroutine (coroutine.close), which was all that held the socket. Then
** the waiter is taken off the socket now, before its memory can go, and
** woken from its timer, where it finds its coroutine gone (task.c).
*/
static int sr_socket_gc(lua_State *L) {
  sr_socket **ud = sr__socket_slot(L, 1);
  if (*ud != NULL) {
    sr_socket *s = *ud;
    *ud = NULL;
    if (sr_socket_loop(s)->L == NULL) {
      s->reader = s->writer = NULL;
      return 0;
    }
    if (s->reader != NULL) sr__wake_later(s->reader, UV_EBADF);
    if (s->writer != NULL) sr__wake_later(s->writer, UV_EBADF);
    sr__socket_close(s);
  }
  return 0;
}

/* ---------------------------------------------------------------------- */
/* Options                                                                */

typedef enum { SR_OPT_BOOL, SR_OPT_INT, SR_OPT_SECONDS } sr_opt_kind;

typedef struct {
  const char *name;
  int level, optname;
  sr_opt_kind kind;
} sr_opt;

static const sr_opt sr_opts[] = {
    {"reuseaddr", SOL_SOCKET, SO_REUSEADDR, SR_OPT_BOOL},
    {"reuseport", SOL_SOCKET, SO_REUSEPORT, SR_OPT_BOOL},
    {"nodelay", IPPROTO_TCP, TCP_NODELAY, SR_OPT_BOOL},
    {"keepalive", SOL_SOCKET, SO_KEEPALIVE, SR_OPT_SECONDS},
    {"rcvbuf", SOL_SOCKET, SO_RCVBUF, SR_OPT_INT},
    {"sndbuf", SOL_SOCKET, SO_SNDBUF, SR_OPT_INT},
    {"broadcast", SOL_SOCKET, SO_BROADCAST, SR_OPT_BOOL},
    {"ipv6only", IPPROTO_IPV6, IPV6_V6ONLY, SR_OPT_BOOL},
    {"linger", SOL_SOCKET, SO_LINGER, SR_OPT_SECONDS},
    {NULL, 0, 0, 0}};

static const sr_opt *sr_check_opt(lua_State *L, int arg) {
  const char *name = luaL_checkstring(L, arg);
  const sr_opt *o;
  for (o = sr_opts; o->name != NULL; o++)
    if (strcmp(o->name, name) == 0) return o;
  luaL_argerror(L, arg, lua_pushfstring(L, "unknown option '%s'", name));
  return NULL;
}

static int sr_sockopt_result(lua_State *L, int r) {
  if (r < 0) return sr__fail(L, -errno);
  lua_pushboolean(L, 1);
  return 1;
}

/* An int argument, refused (not truncated) when a C int cannot hold it. */
static int sr_check_int(lua_State *L, int arg) {
  lua_Integer n = luaL_checkinteger(L, arg);
  luaL_argcheck(L, n >= INT_MIN && n <= INT_MAX, arg, "out of range of a C int");
  return (int)n;
}

/* An int value: booleans count as 1/0, as in C's setsockopt(..., &one). */
static int sr_check_optint(lua_State *L, int arg) {
  if (lua_isboolean(L, arg)) return lua_toboolean(L, arg);
  return sr_check_int(L, arg);
}

/* Linux takes TCP_KEEPIDLE up to this many seconds. */
#define SR_KEEPIDLE_MAX 32767

static int sr_socket_setsockopt(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  const sr_opt *o;
  int v;
  if (lua_type(L, 2) == LUA_TNUMBER) { /* raw: level, optname, value */
    int level = sr_check_int(L, 2);
    int optname = sr_check_int(L, 3);
    v = sr_check_optint(L, 4);
    if (s == NULL) return 3;
    return sr_sockopt_result(L,
                             setsockopt(s->fd, level, optname, &v, sizeof v));
  }
  o = sr_check_opt(L, 2);
  if (s == NULL) return 3;
  switch (o->kind) {
    case SR_OPT_BOOL:
      luaL_checktype(L, 3, LUA_TBOOLEAN);
      v = lua_toboolean(L, 3);
      return sr_sockopt_result(
          L, setsockopt(s->fd, o->level, o->optname, &v, sizeof v));
    case SR_OPT_INT:
      v = sr_check_int(L, 3);
      luaL_argcheck(L, v > 0, 3, "size must be positive");
      return sr_sockopt_result(
          L, setsockopt(s->fd, o->level, o->optname, &v, sizeof v));
    case SR_OPT_SECONDS: {
      /* false: off; a number of seconds: on, with that idle/linger time */
      int on = !(lua_isboolean(L, 3) && !lua_toboolean(L, 3));
      lua_Integer sec = 0;
      if (on) {
        sec = luaL_checkinteger(L, 3);
        luaL_argcheck(L, sec >= 0, 3, "seconds must be >= 0");
      }
      if (o->optname == SO_LINGER) {
        /* Linux's close waits out a linger time even on a non-blocking
        ** socket, which would stop the loop; sockrun's close flushes
        ** what is queued without it. */
        luaL_argcheck(L, sec == 0, 3,
                      "linger must be false or 0 (a longer linger would "
                      "block the loop in close)");
        struct linger lg;
        int r;
        lg.l_onoff = on;
        lg.l_linger = (int)sec;
        r = setsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        if (r == 0) s->abortive = (unsigned)on; /* a close resets */
        return sr_sockopt_result(L, r);
      }
      luaL_argcheck(L, sec <= SR_KEEPIDLE_MAX, 3,
                    "keepalive idle time must be at most 32767 seconds");
      /* an idle time is TCP's: refused elsewhere before anything is set */
      if (on && sec > 0 && s->kind != SR_TCP) return sr__fail(L, UV_ENOTSUP);
      v = on;
      if (setsockopt(s->fd, SOL_SOCKET, SO_KEEPALIVE, &v, sizeof v) < 0)
        return sr__fail(L, -errno);
      if (on && sec > 0) {
        v = (int)sec;
        return sr_sockopt_result(
            L, setsockopt(s->fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, sizeof v));
      }
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  return 0;
}

static int sr_socket_getsockopt(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  const sr_opt *o;
  int v = 0;
  socklen_t len = sizeof v;
  if (lua_type(L, 2) == LUA_TNUMBER) {
    int level = sr_check_int(L, 2);
    int optname = sr_check_int(L, 3);
    if (s == NULL) return 3;
    if (getsockopt(s->fd, level, optname, &v, &len) < 0)
      return sr__fail(L, -errno);
    lua_pushinteger(L, v);
    return 1;
  }
  o = sr_check_opt(L, 2);
  if (s == NULL) return 3;
  if (o->optname == SO_LINGER) {
    struct linger lg;
    len = sizeof lg;
    if (getsockopt(s->fd, SOL_SOCKET, SO_LINGER, &lg, &len) < 0)
      return sr__fail(L, -errno);
    if (lg.l_onoff)
      lua_pushinteger(L, lg.l_linger);
    else
      lua_pushboolean(L, 0);
    return 1;
  }
  if (getsockopt(s->fd, o->level, o->optname, &v, &len) < 0)
    return sr__fail(L, -errno);
  switch (o->kind) {
    case SR_OPT_BOOL: lua_pushboolean(L, v); break;
    case SR_OPT_INT: lua_pushinteger(L, v); break;
    case SR_OPT_SECONDS: /* keepalive */
      if (!v || s->kind != SR_TCP) { /* on but no TCP: 0, as it was set */
        if (v) lua_pushinteger(L, 0); else lua_pushboolean(L, 0);
        break;
      }
      len = sizeof v;
      if (getsockopt(s->fd, IPPROTO_TCP, TCP_KEEPIDLE, &v, &len) < 0)
        return sr__fail(L, -errno);
      lua_pushinteger(L, v);
      break;
  }
  return 1;
}

/* ---------------------------------------------------------------------- */
/* bind, listen, accept, connect                                          */

static socklen_t sr_check_sockaddr(lua_State *L, sr_socket *s, int arg,
                                   struct sockaddr_storage *ss) {
  if (s->family == AF_UNIX) return sr__check_unaddr(L, arg, ss);
  return sr__check_inaddr(L, arg, arg + 1, s->family, ss);
}

/* bind(2) on the descriptor directly: uv_tcp_bind would report a taken
** port only later, at listen or connect, and would not take a socket
** that already has a descriptor for unix paths. */
static int sr_socket_bind(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  struct sockaddr_storage ss;
  socklen_t len;
  if (s == NULL) return 3;
  len = sr_check_sockaddr(L, s, 2, &ss);
  if (bind(s->fd, (struct sockaddr *)&ss, len) < 0) return sr__fail(L, -errno);
  if (s->family == AF_UNIX) {
    const char *path = lua_tostring(L, 2);
    sr_socket_extra *x;
    if (path[0] != '@' && path[0] != '\0' &&
        (x = sr__socket_extra(s)) != NULL) {
      free(x->path);
      x->path = strdup(path); /* (NULL: then it is not removed at close) */
    }
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int sr_socket_listen(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  int backlog;
  if (s == NULL) return 3;
  {
    lua_Integer n = luaL_optinteger(L, 2, INT_MAX);
    luaL_argcheck(L, n >= 0, 2, "backlog must be >= 0");
    backlog = n < INT_MAX ? (int)n : INT_MAX; /* the kernel caps: somaxconn */
  }
  if (s->kind == SR_DGRAM) return sr__fail(L, UV_ENOTSUP);
  if (listen(s->fd, backlog) < 0) return sr__fail(L, -errno);
  s->listening = 1;
  lua_pushboolean(L, 1);
  return 1;
}

/* accept4(2) as soon as a connection is pending: the new socket and the
** peer's address. The socket object is made first, since making it may
** raise, and an accepted descriptor must not be lost then. */
static int sr_socket_accept_k(lua_State *L, int status, lua_KContext ctx) {
  int fresh = (status == LUA_OK), reclaimed = 0;
  for (;;) {
    sr_socket *s = sr__check_socket(L, 1), **slot;
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    int fd, err = 0;
    if (s == NULL) return 3;
    if (!s->listening) return sr__fail(L, UV_EINVAL);
    slot = sr_socket_push_box(L);
    do
      fd = accept4(s->fd, (struct sockaddr *)&ss, &len,
                   SOCK_NONBLOCK | SOCK_CLOEXEC);
    while (fd < 0 && (errno == EINTR || errno == ECONNABORTED));
    if (fd >= 0) {
      sr_socket *c =
          sr_socket_make(sr_socket_loop(s), s->kind, s->family, fd, &err);
      if (c == NULL) return sr__fail(L, err);
      *slot = c;
      c->connected = 1;
      c->read_now = 1;
      return 1 + sr__push_addr(L, (struct sockaddr *)&ss, len);
    }
    err = errno == EWOULDBLOCK ? 0 : -errno; /* (EAGAIN: none pending) */
    lua_pop(L, 1);
    if (err < 0 && !reclaimed &&
        sr_reclaim_fds(L, sr_socket_loop(s), err)) {
      reclaimed = 1;
      continue; /* (the collection may have closed s: checked again) */
    }
    if (err < 0) {
      if (reclaimed) sr_reclaim_failed(sr_socket_loop(s), err);
      return sr__fail(L, err);
    }
    if (!fresh && sr__timedout(sr_socket_loop(s)))
      return sr__fail(L, UV_ETIMEDOUT);
    sr__socket_wait(L, s, &s->reader, SR_TREAD, fresh, ctx, sr_socket_accept_k);
    fresh = 0;
  }
}

static int sr_socket_accept(lua_State *L) {
  return sr_socket_accept_k(L, LUA_OK, 0);
}

static int sr_socket_connect_k(lua_State *L, int status, lua_KContext ctx) {
  int fresh = (status == LUA_OK);
  for (;;) {
    sr_socket *s = sr__check_socket(L, 1);
    if (s == NULL) return 3;
    if (s->connect_status == 2) {
      int err = s->cresult;
      s->connect_status = 0;
      if (err < 0) return sr__fail(L, err);
      s->connected = 1;
      lua_pushboolean(L, 1);
      return 1;
    }
    if (!fresh && sr__timedout(sr_socket_loop(s)))
      return sr__fail(L, UV_ETIMEDOUT);
    sr__socket_wait(L, s, &s->writer, SR_TCONNECT, fresh, ctx,
                    sr_socket_connect_k);
    fresh = 0;
  }
}

/*
** connect(path) on a unix stream socket. A listener whose backlog is full
** refuses a non-blocking connect at once (EAGAIN), and nothing tells when
** it has room again, so connect tries again: 1 ms later, then twice as
** long each time up to 64 ms, until the connect timeout. It thus waits,
** as a TCP connect to a full backlog does. ctx holds the deadline (loop
** time in ms, plus 1; 0 for none) above 7 bits of the next delay in ms.
*/
#define SR_PIPE_RETRY_MAX_MS 64

static int sr_pipe_connect_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  for (;;) {
    sr_socket *s = sr__check_socket(L, 1);
    struct sockaddr_storage ss;
    socklen_t len;
    uint64_t end = (uint64_t)ctx >> 7, delay = (uint64_t)ctx & 127, now;
    if (s == NULL) return 3;
    len = sr_check_sockaddr(L, s, 2, &ss);
    if (connect(s->fd, (struct sockaddr *)&ss, len) == 0) {
      s->connected = 1;
      lua_pushboolean(L, 1);
      return 1;
    }
    if (errno != EAGAIN) return sr__fail(L, -errno);
    now = uv_now(&sr_socket_loop(s)->uv);
    if (end != 0 && now + 1 >= end) return sr__fail(L, UV_ETIMEDOUT);
    ctx = (lua_KContext)(end << 7 | (delay * 2 < SR_PIPE_RETRY_MAX_MS
                                         ? delay * 2
                                         : SR_PIPE_RETRY_MAX_MS));
    if (end != 0 && end - 1 - now < delay) delay = end - 1 - now;
    sr_socket_wait_for(L, s, &s->writer, (double)delay / 1000.0, 1, ctx,
                       sr_pipe_connect_k);
  }
}

/* connect(host, port) with a numeric host (the Lua side resolves names),
** or connect(path). Datagram connects complete at once. */
static int sr_socket_connect(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  struct sockaddr_storage ss;
  socklen_t len;
  int err;
  if (s == NULL) return 3;
  len = sr_check_sockaddr(L, s, 2, &ss);
  if (s->kind != SR_DGRAM && s->connected) return sr__fail(L, UV_EISCONN);
  /* A connect that timed out is still under way (or has ended since):
  ** calling connect again waits for that one, with a fresh timeout. */
  if (s->connect_status != 0) return sr_socket_connect_k(L, LUA_OK, 0);
  if (s->listening) return sr__fail(L, UV_EINVAL);
  if (s->kind == SR_PIPE) {
    uint32_t t = sr_socket_timeout_ms(s, SR_TCONNECT);
    uint64_t end =
        t == SR_NO_TIMEOUT ? 0 : uv_now(&sr_socket_loop(s)->uv) + t + 1;
    return sr_pipe_connect_k(L, LUA_OK, (lua_KContext)(end << 7 | 1));
  }
  if (s->kind != SR_TCP) { /* datagram: immediate */
    if (connect(s->fd, (struct sockaddr *)&ss, len) < 0)
      return sr__fail(L, -errno);
    s->connected = 1;
    lua_pushboolean(L, 1);
    return 1;
  }
  if (connect(s->fd, (struct sockaddr *)&ss, len) == 0) {
    s->connected = 1;
    lua_pushboolean(L, 1);
    return 1;
  }
  if (errno != EINPROGRESS) return sr__fail(L, -errno);
  s->connect_status = 1; /* stream.c watches it, and ends it */
  if ((err = sr__stream_watch(s)) < 0) {
    s->connect_status = 0;
    return sr__fail(L, err);
  }
  return sr_socket_connect_k(L, LUA_OK, 0);
}

/* ---------------------------------------------------------------------- */
/* Addresses, timeouts, descriptor, tostring                              */

static int sr_socket_names(lua_State *L, int peer) {
  sr_socket *s = sr__check_socket(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  int r;
  if (s == NULL) return 3;
  r = peer ? getpeername(s->fd, (struct sockaddr *)&ss, &len)
           : getsockname(s->fd, (struct sockaddr *)&ss, &len);
  if (r < 0) return sr__fail(L, -errno);
  return sr__push_addr(L, (struct sockaddr *)&ss, len);
}

static int sr_socket_getsockname(lua_State *L) {
  return sr_socket_names(L, 0);
}

static int sr_socket_getpeername(lua_State *L) {
  return sr_socket_names(L, 1);
}

/* Set the three timeouts (ms); none on a socket that has no extra
** block is what it has already. */
static int sr_socket_set_timeouts(lua_State *L, sr_socket *s, uint32_t c,
                                  uint32_t r, uint32_t w) {
  sr_socket_extra *x = s->extra;
  if (x == NULL && (c & r & w) != SR_NO_TIMEOUT &&
      (x = sr__socket_extra(s)) == NULL)
    return sr__fail(L, UV_ENOMEM);
  if (x != NULL) {
    x->timeout_ms[SR_TCONNECT] = c;
    x->timeout_ms[SR_TREAD] = r;
    x->timeout_ms[SR_TWRITE] = w;
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int sr_socket_settimeout(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  uint32_t t = sr_timeout_ms(sr__opt_seconds(L, 2));
  if (s == NULL) return 3;
  return sr_socket_set_timeouts(L, s, t, t, t);
}

static int sr_socket_settimeouts(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  uint32_t c = sr_timeout_ms(sr__opt_seconds(L, 2)),
           r = sr_timeout_ms(sr__opt_seconds(L, 3)),
           w = sr_timeout_ms(sr__opt_seconds(L, 4));
  if (s == NULL) return 3;
  return sr_socket_set_timeouts(L, s, c, r, w);
}

/* The timeouts, as the Lua side needs them to bound name resolution. */
static int sr_socket_gettimeouts(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  int i;
  if (s == NULL) return 3;
  for (i = 0; i < 3; i++) {
    if (sr_socket_timeout_ms(s, i) == SR_NO_TIMEOUT)
      lua_pushnil(L);
    else
      lua_pushnumber(L, sr_socket_timeout(s, i));
  }
  return 3;
}

static int sr_socket_setmaxline(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  sr_socket_extra *x;
  luaL_argcheck(L, n > 0, 2, "limit must be positive");
  if (s == NULL) return 3;
  if ((x = sr__socket_extra(s)) == NULL) return sr__fail(L, UV_ENOMEM);
  /* no socket holds more than SR_BUF_MAX unread: a higher limit is none */
  x->maxline = n < (lua_Integer)SR_BUF_MAX ? (uint32_t)n : SR_BUF_MAX;
  lua_pushboolean(L, 1);
  return 1;
}

static int sr_socket_fileno(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  if (s == NULL) return 3;
  lua_pushinteger(L, s->fd);
  return 1;
}

static int sr_socket_family(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  if (s == NULL) return 3;
  lua_pushstring(L, sr__family_name(s->family));
  lua_pushstring(L, s->kind == SR_DGRAM ? "dgram" : "stream");
  return 2;
}

static int sr_socket_tostring(lua_State *L) {
  sr_socket *s = sr__to_socket(L, 1);
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  const char *kind, *state;
  luaL_Buffer b;
  if (s == NULL) {
    lua_pushliteral(L, "sockrun.socket(closed)");
    return 1;
  }
  if (s->kind == SR_TTY)
    kind = "stdin";
  else if (s->family == AF_UNIX)
    kind = s->kind == SR_DGRAM ? "unix-dgram" : "unix";
  else if (s->kind == SR_DGRAM)
    kind = s->family == AF_INET6 ? "udp6" : "udp";
  else
    kind = s->family == AF_INET6 ? "tcp6" : "tcp";
  state = s->listening ? "listening" : s->connected ? "connected" : "open";
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "sockrun.socket(");
  luaL_addstring(&b, kind);
  if (getsockname(s->fd, (struct sockaddr *)&ss, &len) == 0) {
    int n = sr__push_addr(L, (struct sockaddr *)&ss, len);
    luaL_addstring(&b, ", ");
    if (n == 2) {
      const char *host = lua_tostring(L, -2);
      int v6 = strchr(host, ':') != NULL;
      lua_pushfstring(L, v6 ? "[%s]:%d" : "%s:%d", host,
                      (int)lua_tointeger(L, -1));
      lua_replace(L, -3);
      lua_pop(L, 1);
    } else if (lua_rawlen(L, -1) == 0) { /* a unix socket with no name */
      lua_pop(L, 1);
      lua_pushliteral(L, "unnamed");
    }
    luaL_addvalue(&b);
  }
  luaL_addstring(&b, ", ");
  luaL_addstring(&b, state);
  luaL_addchar(&b, ')');
  luaL_pushresult(&b);
  return 1;
}

/* read, write and friends differ for streams and datagrams. */
static int sr_socket_read(lua_State *L) {
  sr_socket *s = sr__to_socket(L, 1);
  return s != NULL && s->kind == SR_DGRAM ? sr__dgram_read(L)
                                          : sr__stream_read(L, s);
}

/* The arguments become strings first: numbers converted can run a
** finalizer, which may close the socket and even run the loop (outside
** tasks), so the socket is read from its userdata only after that. */
static int sr_socket_write(lua_State *L) {
  sr_socket **slot = sr__socket_slot(L, 1), *s;
  int i, n = lua_gettop(L);
  size_t total = 0, len;
  for (i = 2; i <= n; i++) {
    luaL_checklstring(L, i, &len);
    total += len;
  }
  s = *slot;
  return s != NULL && s->kind == SR_DGRAM ? sr__dgram_write(L)
                                          : sr__stream_write(L, s, total);
}

/* core.addrfamily(host): "inet" or "inet6" for a numeric address, nil
** for anything else; lets the Lua side tell a malformed literal from a
** name without raising from inside its own calls. */
static int sr_addrfamily(lua_State *L) {
  size_t len;
  const char *host = luaL_checklstring(L, 1, &len);
  unsigned char addr[sizeof(struct in6_addr)];
  uint32_t scope;
  switch (sr__parse_numeric(host, len, addr, &scope)) {
    case AF_INET: lua_pushliteral(L, "inet"); return 1;
    case AF_INET6: lua_pushliteral(L, "inet6"); return 1;
    default: return 0;
  }
}

/*
** core.unlink_stale(path): removes path if it is a unix socket file that
** nothing listens on any more (a server that died, or a socket bound and
** never listened), so that sr.listen can bind it again; true if it did.
** Only a socket file whose connect is refused: never a regular file, nor
** the path of a live server (connected to, or with its backlog full).
*/
static int sr_unlink_stale(lua_State *L) {
  struct sockaddr_storage ss;
  socklen_t len = sr__check_unaddr(L, 1, &ss);
  const char *path = lua_tostring(L, 1);
  struct stat st;
  int fd, stale = 0;
  if (path[0] == '@' || path[0] == '\0' || lstat(path, &st) < 0 ||
      !S_ISSOCK(st.st_mode))
    return 0;
  if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0)) < 0)
    return 0;
  if (connect(fd, (struct sockaddr *)&ss, len) < 0 && errno == ECONNREFUSED)
    stale = unlink(path) == 0;
  close(fd);
  lua_pushboolean(L, stale);
  return 1;
}

static const luaL_Reg sr_socket_methods[] = {
    {"setsockopt", sr_socket_setsockopt},
    {"getsockopt", sr_socket_getsockopt},
    {"bind", sr_socket_bind},
    {"listen", sr_socket_listen},
    {"accept", sr_socket_accept},
    {"connect", sr_socket_connect},
    /* read: registered apart, in sr__socket_open (it has 2 upvalues) */
    {"write", sr_socket_write},
    {"sendto", sr__dgram_sendto},
    {"recvfrom", sr__dgram_recvfrom},
    {"shutdown", sr__stream_shutdown},
    {"close", sr_socket_close},
    {"settimeout", sr_socket_settimeout},
    {"settimeouts", sr_socket_settimeouts},
    {"gettimeouts", sr_socket_gettimeouts},
    {"setmaxline", sr_socket_setmaxline},
    {"getsockname", sr_socket_getsockname},
    {"getpeername", sr_socket_getpeername},
    {"fileno", sr_socket_fileno},
    {"family", sr_socket_family},
    {NULL, NULL}};

static const luaL_Reg sr_socket_metamethods[] = {
    {"__tostring", sr_socket_tostring},
    {"__gc", sr_socket_gc},
    {"__close", sr_socket_close},
    {NULL, NULL}};

static const struct {
  const char *name;
  int value;
} sr_constants[] = {
    {"AF_INET", AF_INET},           {"AF_INET6", AF_INET6},
    {"AF_UNIX", AF_UNIX},           {"AF_LOCAL", AF_LOCAL},
    {"SOCK_STREAM", SOCK_STREAM},   {"SOCK_DGRAM", SOCK_DGRAM},
    {"SOL_SOCKET", SOL_SOCKET},     {"SO_REUSEADDR", SO_REUSEADDR},
    {"SO_REUSEPORT", SO_REUSEPORT}, {"SO_KEEPALIVE", SO_KEEPALIVE},
    {"SO_RCVBUF", SO_RCVBUF},       {"SO_SNDBUF", SO_SNDBUF},
    {"SO_BROADCAST", SO_BROADCAST}, {"SO_ERROR", SO_ERROR},
    {"SO_TYPE", SO_TYPE},           {"IPPROTO_TCP", IPPROTO_TCP},
    {"IPPROTO_UDP", IPPROTO_UDP},   {"IPPROTO_IPV6", IPPROTO_IPV6},
    {"TCP_NODELAY", TCP_NODELAY},   {"TCP_KEEPIDLE", TCP_KEEPIDLE},
    {"IPV6_V6ONLY", IPV6_V6ONLY},   {NULL, 0}};

/* Register the socket metatable, constants and sr.socket into the table
** at the top; the method table is also exposed as `methods` so the Lua
** side can add its conveniences. */
void sr__socket_open(lua_State *L, sr_loop *lp) {
  int i;
  luaL_newmetatable(L, SR_SOCKET_MT);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, sr_socket_tag);
  lua_newtable(L);
  sr__setfuncs(L, sr_socket_methods, lp);
  /* read gets the strings it returns most often as upvalues (stream.c) */
  lua_pushlightuserdata(L, lp);
  lua_pushcclosure(L, sr_socket_read, 1 + sr__stream_push_read_upvalues(L));
  lua_setfield(L, -2, "read");
  lua_pushvalue(L, -1);
  lua_setfield(L, -4, "methods");
  lua_setfield(L, -2, "__index");
  sr__setfuncs(L, sr_socket_metamethods, lp);
  lua_pop(L, 1);
  lua_pushlightuserdata(L, lp);
  lua_pushcclosure(L, sr_socket_new, 1);
  lua_setfield(L, -2, "socket");
  lua_pushcfunction(L, sr_addrfamily);
  lua_setfield(L, -2, "addrfamily");
  lua_pushcfunction(L, sr_unlink_stale);
  lua_setfield(L, -2, "unlink_stale");
  for (i = 0; sr_constants[i].name != NULL; i++) {
    lua_pushinteger(L, sr_constants[i].value);
    lua_setfield(L, -2, sr_constants[i].name);
  }
}
