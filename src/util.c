/*
** util.c -- plumbing shared by the other files: the nil, message, code
** error convention, argument checks for families, ports and addresses,
** and pushing socket addresses to Lua.
*/

#include <arpa/inet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "internal.h"

/* nil, message, code -- message and code from libuv, as luv does. A few
** codes get the wording the design promises instead of strerror's. */
int sr__fail(lua_State *L, int err) {
  const char *msg;
  switch (err) {
    case UV_EBADF: msg = "socket is closed"; break;
    case UV_ETIMEDOUT: msg = "timeout"; break;
    case UV_ECANCELED: msg = "cancelled"; break;
    default: msg = uv_strerror(err); break;
  }
  return sr__fail_msg(L, msg, uv_err_name(err));
}

int sr__fail_msg(lua_State *L, const char *msg, const char *code) {
  luaL_pushfail(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code);
  return 3;
}

/* An error object as C prints it: its text if a string (lua_tostring on
** anything else would convert it, or give NULL for printf). */
const char *sr__error_text(lua_State *L, int idx) {
  return lua_type(L, idx) == LUA_TSTRING ? lua_tostring(L, idx)
                                         : "(error object is not a string)";
}

/* Close callback of the handles we malloc'd with the handle first (task
** and linger timers, signal watchers): their memory goes here. */
void sr__free_close_cb(uv_handle_t *h) { free(h); }

/* luaL_setfuncs with the loop as the single upvalue of every function. */
void sr__setfuncs(lua_State *L, const luaL_Reg *l, sr_loop *lp) {
  for (; l->name != NULL; l++) {
    lua_pushlightuserdata(L, lp);
    lua_pushcclosure(L, l->func, 1);
    lua_setfield(L, -2, l->name);
  }
}

const char *sr__family_name(int family) {
  switch (family) {
    case AF_INET: return "inet";
    case AF_INET6: return "inet6";
    case AF_UNIX: return "unix";
    default: return "unknown";
  }
}

/* A family given by name ("inet", "inet6", "unix", "local") or number. */
int sr__check_family(lua_State *L, int arg) {
  static const char *const names[] = {"inet", "inet6", "unix", "local", NULL};
  static const int values[] = {AF_INET, AF_INET6, AF_UNIX, AF_UNIX};
  if (lua_type(L, arg) == LUA_TNUMBER) {
    lua_Integer f = luaL_checkinteger(L, arg);
    if (f != AF_INET && f != AF_INET6 && f != AF_UNIX)
      luaL_argerror(L, arg, "unknown domain");
    return (int)f;
  }
  return values[sr__check_name(L, arg, names, "domain")];
}

/* luaL_checkoption, worded "unknown <what> 'x'". */
int sr__check_name(lua_State *L, int arg, const char *const names[],
                   const char *what) {
  const char *name = luaL_checkstring(L, arg);
  int i;
  for (i = 0; names[i] != NULL; i++)
    if (strcmp(names[i], name) == 0) return i;
  return luaL_argerror(L, arg,
                       lua_pushfstring(L, "unknown %s '%s'", what, name));
}

int sr__check_port(lua_State *L, int arg) {
  lua_Integer port;
  int isint;
  port = lua_tointegerx(L, arg, &isint);
  if (!isint) {
    if (lua_type(L, arg) == LUA_TSTRING) /* "8080" is a fine port too */
      luaL_argcheck(L, 0, arg, "port must be a number");
    luaL_typeerror(L, arg, "number");
  }
  luaL_argcheck(L, port >= 0 && port <= 65535, arg, "port out of range");
  return (int)port;
}

/*
** A numeric host: IPv4, or IPv6 with an optional zone after '%' (an
** interface name, or its index). Returns AF_INET or AF_INET6 with the
** address in addr (16 bytes) and the zone's interface index in *scope (0
** for none), or 0 for anything else: a name, a malformed literal, an
** unknown zone, or a string with a zero byte inside (C would read only
** the part before it).
*/
int sr__parse_numeric(const char *host, size_t len, void *addr,
                      uint32_t *scope) {
  char buf[INET6_ADDRSTRLEN];
  const char *pct;
  *scope = 0;
  if (strlen(host) != len) return 0;
  if (inet_pton(AF_INET, host, addr) == 1) return AF_INET;
  if ((pct = strchr(host, '%')) != NULL) {
    const char *zone = pct + 1;
    size_t n = (size_t)(pct - host);
    if (n >= sizeof buf || *zone == '\0') return 0;
    memcpy(buf, host, n);
    buf[n] = '\0';
    if (strspn(zone, "0123456789") == strlen(zone)) {
      unsigned long id = strlen(zone) <= 10 ? strtoul(zone, NULL, 10) : 0;
      *scope = id <= UINT32_MAX ? (uint32_t)id : 0;
    } else {
      *scope = if_nametoindex(zone);
    }
    if (*scope == 0) return 0;
    host = buf;
  }
  return inet_pton(AF_INET6, host, addr) == 1 ? AF_INET6 : 0;
}

/*
** A numeric host and a port into a sockaddr of the given family. "*" and
** "" are the any-address; names are resolved by the Lua side before they
** get here, so anything else that does not parse is a malformed address.
*/
socklen_t sr__check_inaddr(lua_State *L, int harg, int parg, int family,
                           struct sockaddr_storage *ss) {
  size_t len;
  const char *host = luaL_checklstring(L, harg, &len);
  int port = sr__check_port(L, parg), any = *host == '\0' || strcmp(host, "*") == 0;
  uint32_t scope;
  memset(ss, 0, sizeof *ss);
  if (family == AF_INET) {
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    sin->sin_family = AF_INET;
    sin->sin_port = htons((uint16_t)port);
    if (any)
      sin->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (sr__parse_numeric(host, len, &sin->sin_addr, &scope) != AF_INET)
      luaL_argerror(L, harg, "malformed IPv4 address");
    return sizeof *sin;
  } else {
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons((uint16_t)port);
    if (any)
      sin6->sin6_addr = in6addr_any;
    else if (sr__parse_numeric(host, len, &sin6->sin6_addr, &scope) != AF_INET6)
      luaL_argerror(L, harg, "malformed IPv6 address");
    else
      sin6->sin6_scope_id = scope; /* fe80::1%eth0 */
    return sizeof *sin6;
  }
}

/* A unix path into a sockaddr_un; a leading "@" or "\0" names the Linux
** abstract namespace. Too long a path is misuse, not silently cut. */
socklen_t sr__check_unaddr(lua_State *L, int arg, struct sockaddr_storage *ss) {
  size_t len;
  const char *path = luaL_checklstring(L, arg, &len);
  struct sockaddr_un *sun = (struct sockaddr_un *)ss;
  memset(ss, 0, sizeof *ss);
  sun->sun_family = AF_UNIX;
  luaL_argcheck(L, len > 0, arg, "empty unix socket path");
  /* a path needs room for its terminating zero; an abstract name none */
  luaL_argcheck(L,
                len < sizeof sun->sun_path ||
                    (len == sizeof sun->sun_path &&
                     (path[0] == '@' || path[0] == '\0')),
                arg, "unix socket path too long");
  memcpy(sun->sun_path, path, len);
  if (path[0] == '@') {
    sun->sun_path[0] = '\0';
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  }
  if (path[0] == '\0')
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
  luaL_argcheck(L, memchr(path, '\0', len) == NULL, arg,
                "unix socket path contains a zero byte");
  return sizeof *sun;
}

/* The dotted quad of an IPv4 address, as inet_ntop writes it; here because
** glibc's goes through sprintf, which cost a server about a tenth of the
** work it does per accepted connection. Returns the length. */
static size_t sr_format_ipv4(const struct in_addr *a, char *out) {
  const unsigned char *b = (const unsigned char *)&a->s_addr;
  char *p = out;
  int i;
  for (i = 0; i < 4; i++) {
    unsigned v = b[i];
    if (i > 0) *p++ = '.';
    if (v >= 100) *p++ = (char)('0' + v / 100);
    if (v >= 10) *p++ = (char)('0' + v / 10 % 10);
    *p++ = (char)('0' + v % 10);
  }
  return (size_t)(p - out);
}

/* Push host, port (2 values) or a unix path (1 value). */
int sr__push_addr(lua_State *L, const struct sockaddr *sa, socklen_t len) {
  char host[INET6_ADDRSTRLEN];
  switch (sa->sa_family) {
    case AF_INET: {
      const struct sockaddr_in *sin = (const struct sockaddr_in *)sa;
      lua_pushlstring(L, host, sr_format_ipv4(&sin->sin_addr, host));
      lua_pushinteger(L, ntohs(sin->sin_port));
      return 2;
    }
    case AF_INET6: {
      const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)sa;
      char ifname[IF_NAMESIZE];
      inet_ntop(AF_INET6, &sin6->sin6_addr, host, sizeof host);
      /* a link-local peer's zone, so that the address can be used again */
      if (sin6->sin6_scope_id == 0)
        lua_pushstring(L, host);
      else if (if_indextoname(sin6->sin6_scope_id, ifname) != NULL)
        lua_pushfstring(L, "%s%%%s", host, ifname);
      else
        lua_pushfstring(L, "%s%%%I", host, (lua_Integer)sin6->sin6_scope_id);
      lua_pushinteger(L, ntohs(sin6->sin6_port));
      return 2;
    }
    case AF_UNIX: {
      const struct sockaddr_un *sun = (const struct sockaddr_un *)sa;
      size_t off = offsetof(struct sockaddr_un, sun_path);
      size_t n = len > off ? (size_t)len - off : 0;
      if (n > 0 && sun->sun_path[0] == '\0') { /* abstract: "@name" */
        lua_pushliteral(L, "@");
        lua_pushlstring(L, sun->sun_path + 1, n - 1);
        lua_concat(L, 2);
      } else {
        lua_pushlstring(L, sun->sun_path, strnlen(sun->sun_path, n));
      }
      return 1;
    }
    default: lua_pushnil(L); return 1;
  }
}

/* Seconds: a non-negative number, or nil/false for "no bound" (-1). */
double sr__opt_seconds(lua_State *L, int arg) {
  double sec;
  if (lua_isnoneornil(L, arg) ||
      (lua_isboolean(L, arg) && !lua_toboolean(L, arg)))
    return -1;
  sec = luaL_checknumber(L, arg);
  luaL_argcheck(L, sec >= 0 && sec == sec, arg, "seconds must be >= 0");
  return sec;
}
