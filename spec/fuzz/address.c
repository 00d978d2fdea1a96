/*
** address.c -- libFuzzer target for the argument parsers in src/util.c:
** hosts and ports into socket addresses, unix paths, family and option
** names. Each runs under lua_pcall: a malformed input may raise a Lua
** error, never crash, and what parses must agree with core.addrfamily.
*/

#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "../../src/internal.h"

static lua_State *L;

static int parse_in(lua_State *L1) {
  struct sockaddr_storage ss;
  int family = (int)lua_tointeger(L1, 3);
  socklen_t len = sr__check_inaddr(L1, 1, 2, family, &ss);
  if (len == 0 || ss.ss_family != family) abort();
  return 0;
}

static int parse_un(lua_State *L1) {
  struct sockaddr_storage ss;
  socklen_t len = sr__check_unaddr(L1, 1, &ss);
  if (len > sizeof(struct sockaddr_un)) abort();
  return 0;
}

static int parse_names(lua_State *L1) {
  static const char *const names[] = {"stream", "dgram", NULL};
  sr__check_name(L1, 1, names, "type");
  sr__check_family(L1, 1);
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  unsigned char buf[sizeof(struct in6_addr)];
  char host[128];
  size_t n;
  int fam, ok4, ok6;
  if (L == NULL) L = luaL_newstate();
  if (size < 2) return 0;
  n = size - 2 < sizeof host - 1 ? size - 2 : sizeof host - 1;
  memcpy(host, data + 2, n);
  host[n] = '\0';
  ok4 = inet_pton(AF_INET, host, buf) == 1;
  ok6 = strchr(host, '%') == NULL && inet_pton(AF_INET6, host, buf) == 1;
  for (fam = 0; fam < 2; fam++) {
    int family = fam ? AF_INET6 : AF_INET, st;
    lua_pushcfunction(L, parse_in);
    lua_pushlstring(L, host, n);
    lua_pushinteger(L, (lua_Integer)(data[0] | data[1] << 8) - 1000);
    lua_pushinteger(L, family);
    st = lua_pcall(L, 3, 0, 0);
    /* a valid literal of the family with a valid port must parse */
    if (st != LUA_OK && (fam ? ok6 : ok4) && n == strlen(host)) {
      int port = (data[0] | data[1] << 8) - 1000;
      if (port >= 0 && port <= 65535) abort();
    }
    lua_settop(L, 0);
  }
  lua_pushcfunction(L, parse_un);
  lua_pushlstring(L, (const char *)data, size);
  lua_pcall(L, 1, 0, 0);
  lua_settop(L, 0);
  lua_pushcfunction(L, parse_names);
  lua_pushlstring(L, host, n);
  lua_pcall(L, 1, 0, 0);
  lua_settop(L, 0);
  return 0;
}
