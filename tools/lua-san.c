/*
** lua-san.c -- a minimal lua5.4 interpreter, built with the sanitizers by
** `make sanitize`, to run busted over the sanitized module. Preloading the
** ASan runtime into stock lua5.4 would also preload it into every process
** the specs start (python3, curl...), whose own leak reports would then
** pollute their output. Usage: lua-san script.lua [args...]
*/

#include <stdio.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"

static int msghandler(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

int main(int argc, char **argv) {
  lua_State *L = luaL_newstate();
  int i, status;
  if (L == NULL || argc < 2) {
    fprintf(stderr, "usage: lua-san script.lua [args...]\n");
    return 1;
  }
  luaL_openlibs(L);
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
  if (status != LUA_OK) fprintf(stderr, "lua-san: %s\n", lua_tostring(L, -1));
  lua_close(L);
  return status == LUA_OK ? 0 : 1;
}
