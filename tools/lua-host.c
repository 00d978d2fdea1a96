/*
** lua-host.c -- a minimal lua5.4 interpreter for the specs, built two ways:
**
** lua-san (make sanitize): with the sanitizers, to run busted over the
** sanitized module. Preloading the ASan runtime into stock lua5.4 would
** also preload it into every process the specs start (python3, curl...),
** whose own leak reports would then pollute their output.
**
** lua-failalloc (-DFAILALLOC, make test and make sanitize): its allocator
** can be made to fail, for the specs of what sockrun does out of memory (a
** stock allocator fails only when the machine runs out, and Lua's
** emergency collection mostly recovers then). The script gets a global
** failalloc(n): from the (n+1)th allocation that grows a block on, every
** one fails, until failalloc(nil); it returns how many failed so far.
**
** Usage: lua-san|lua-failalloc script.lua [args...]
*/

#include <stdio.h>
#include <stdlib.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

#ifdef FAILALLOC
static long grant = -1; /* allocations left to succeed; -1: all */
static long failed;

static void *failing_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  (void)ud;
  if (nsize == 0) {
    free(ptr);
    return NULL;
  }
  if (ptr == NULL || nsize > osize) { /* a shrink never fails */
    if (grant == 0) {
      failed++;
      return NULL;
    }
    if (grant > 0) grant--;
  }
  return realloc(ptr, nsize);
}

static int failalloc(lua_State *L) {
  grant = lua_isnoneornil(L, 1) ? -1 : (long)luaL_checkinteger(L, 1);
  lua_pushinteger(L, failed);
  return 1;
}
#define NEWSTATE() lua_newstate(failing_alloc, NULL)
#else
#define NEWSTATE() luaL_newstate()
#endif

static int msghandler(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = NEWSTATE();
  int i, status;
  if (L == NULL || argc < 2) {
    fprintf(stderr, "usage: %s script.lua [args...]\n", argv[0]);
    return 1;
  }
  luaL_openlibs(L);
#ifdef FAILALLOC
  lua_register(L, "failalloc", failalloc);
#endif
  lua_createtable(L, argc - 2, 2);
  for (i = 0; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  lua_pushcfunction(L, msghandler);
  status = luaL_loadfile(L, argv[1]);
  if (status == LUA_OK) {
    for (i = 2; i < argc; i++) lua_pushstring(L, argv[i]);
    status = lua_pcall(L, argc - 2, 0, 1);
  }
  if (status != LUA_OK) fprintf(stderr, "%s: %s\n", argv[0], lua_tostring(L, -1));
#ifdef FAILALLOC
  grant = -1;
#endif
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
