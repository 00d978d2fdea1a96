/*
** dgram.c -- datagram sockets: UDP over IPv4/IPv6 and unix datagram.
** libuv has no handle for unix datagrams, so every datagram socket is our
** own non-blocking descriptor watched by uv_poll; sendto/recvfrom are
** tried first and wait for readiness only on EAGAIN.
*/

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

int sr__dgram_init(sr_socket *s, int family) {
  int err;
  s->fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->fd < 0) return -errno;
  if ((err = sr__socket_handle(s)) < 0) close(s->fd);
  return err;
}

static void sr_dgram_poll_cb(uv_poll_t *h, int status, int events);

/* Watch for exactly what the waiting tasks need. */
static void sr_dgram_update(sr_socket *s) {
  int want = (s->reader ? UV_READABLE : 0) | (s->writer ? UV_WRITABLE : 0);
  sr__socket_poll(s, want, sr_dgram_poll_cb);
}

static void sr_dgram_poll_cb(uv_poll_t *h, int status, int events) {
  sr_socket *s = h->data;
  if (status < 0) s->poll_events = 0; /* libuv stopped watching: an error */
  if (status < 0 || (events & UV_READABLE)) sr__socket_wake(&s->reader, 0);
  if (status < 0 || (events & UV_WRITABLE)) sr__socket_wake(&s->writer, 0);
  sr_dgram_update(s);
}

/* Watch the descriptor for the readiness this wait needs, then wait.
** Should the wait be refused, the poll callback stops watching. */
static int sr_dgram_wait(lua_State *L, sr_socket *s, int reading, int fresh,
                         lua_KContext ctx, lua_KFunction k) {
  sr__socket_poll(s, s->poll_events | (reading ? UV_READABLE : UV_WRITABLE),
                  sr_dgram_poll_cb);
  return sr__socket_wait(L, s, reading ? &s->reader : &s->writer,
                         reading ? SR_TREAD : SR_TWRITE, fresh, ctx, k);
}

/* recvfrom into the loop's buffer: data, host, port (unix: data, path). */
static int sr_dgram_recv_k(lua_State *L, int status, lua_KContext ctx) {
  int fresh = (status == LUA_OK), with_addr = (int)ctx;
  for (;;) {
    sr_socket *s = sr__check_socket(L, 1);
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    ssize_t n;
    sr_loop *lp;
    if (s == NULL) return 3;
    if (!fresh && sr__timedout(sr_socket_loop(s)))
      return sr__fail(L, UV_ETIMEDOUT);
    lp = sr_socket_loop(s);
    sr__stream_reclaim(lp); /* a stream's reader may be reading it */
    /* MSG_TRUNC: the datagram's own length, also when the buffer was not
    ** long enough for it (a unix datagram can be longer than 64 KiB) */
    n = recvfrom(s->fd, lp->rbuf, sizeof lp->rbuf, MSG_TRUNC,
                 (struct sockaddr *)&ss, &len);
    if (n > (ssize_t)sizeof lp->rbuf) return sr__fail(L, UV_EMSGSIZE);
    if (n >= 0) {
      lua_pushlstring(L, lp->rbuf, (size_t)n);
      if (!with_addr) return 1;
      if (len == 0 || (s->family == AF_UNIX && len <= sizeof(sa_family_t))) {
        lua_pushliteral(L, ""); /* an unbound unix sender has no name */
        return 2;
      }
      return 1 + sr__push_addr(L, (struct sockaddr *)&ss, len);
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      return sr__fail(L, -errno);
    sr_dgram_wait(L, s, 1, fresh, ctx, sr_dgram_recv_k);
    fresh = 0;
  }
}

int sr__dgram_recvfrom(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  if (s == NULL) return 3;
  if (s->kind != SR_DGRAM) return sr__fail(L, UV_ENOTSUP);
  return sr_dgram_recv_k(L, LUA_OK, 1);
}

/* s:read() on a datagram socket: the next datagram, without its sender.
** A datagram is read whole, so no format applies. */
int sr__dgram_read(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  luaL_argcheck(L, lua_isnoneornil(L, 2), 2,
                "a datagram socket reads whole datagrams: no format");
  if (s == NULL) return 3;
  return sr_dgram_recv_k(L, LUA_OK, 0);
}

/* sendto(data, host, port) / sendto(data, path) / sendto(data) when
** connected. Arguments are parsed again on each retry: cheap, and nothing
** has to be kept across the wait. ctx 1: called as write(), which returns
** the socket. */
static int sr_dgram_send_k(lua_State *L, int status, lua_KContext ctx) {
  int fresh = (status == LUA_OK);
  for (;;) {
    sr_socket *s = sr__check_socket(L, 1);
    struct sockaddr_storage ss;
    socklen_t len = 0;
    size_t n;
    const char *data = luaL_checklstring(L, 2, &n);
    ssize_t r;
    if (s == NULL) return 3;
    if (!lua_isnoneornil(L, 3)) {
      if (s->family == AF_UNIX)
        len = sr__check_unaddr(L, 3, &ss);
      else
        len = sr__check_inaddr(L, 3, 4, s->family, &ss);
    }
    if (!fresh && sr__timedout(sr_socket_loop(s)))
      return sr__fail(L, UV_ETIMEDOUT);
    r = sendto(s->fd, data, n, MSG_NOSIGNAL,
               len ? (struct sockaddr *)&ss : NULL, len);
    if (r >= 0) {
      if (ctx)
        lua_settop(L, 1);
      else
        lua_pushboolean(L, 1);
      return 1;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
      return sr__fail(L, -errno);
    sr_dgram_wait(L, s, 0, fresh, ctx, sr_dgram_send_k);
    fresh = 0;
  }
}

int sr__dgram_sendto(lua_State *L) {
  sr_socket *s = sr__check_socket(L, 1);
  luaL_checkstring(L, 2);
  if (s == NULL) return 3;
  if (s->kind != SR_DGRAM) return sr__fail(L, UV_ENOTSUP);
  return sr_dgram_send_k(L, LUA_OK, 0);
}

/* s:write(...) on a connected datagram socket: one datagram of all the
** arguments; returns the socket, as stream writes do. */
int sr__dgram_write(lua_State *L) {
  int i, n = lua_gettop(L);
  for (i = 2; i <= n; i++) luaL_checklstring(L, i, NULL);
  if (sr__check_socket(L, 1) == NULL) return 3;
  if (n == 1) return 1;
  lua_concat(L, n - 1);
  return sr_dgram_send_k(L, LUA_OK, 1);
}
