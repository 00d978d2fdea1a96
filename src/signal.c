/*
** signal.c -- sr.signal(name, fn): run fn in a new task on each delivery
** of a signal. Watching a signal does not keep the loop alive.
*/

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

typedef struct {
  uv_signal_t h; /* first: the close callback frees the struct */
  int fn;        /* registry ref to the Lua function */
} sr_signal;

static const struct {
  const char *name;
  int num;
} sr_signames[] = {{"SIGINT", SIGINT},     {"SIGTERM", SIGTERM},
                   {"SIGHUP", SIGHUP},     {"SIGQUIT", SIGQUIT},
                   {"SIGUSR1", SIGUSR1},   {"SIGUSR2", SIGUSR2},
                   {"SIGWINCH", SIGWINCH}, {"SIGCHLD", SIGCHLD},
                   {"SIGALRM", SIGALRM},   {NULL, 0}};

/* Under sr_signal_cb's protected call: spawn the handler's task with the
** signal's name. Everything that allocates is in here, so that running
** out of memory fails this delivery only, not the loop. */
static int sr_signal_dispatch(lua_State *L) {
  sr_loop *lp = lua_touserdata(L, 1);
  const sr_signal *sg = lua_touserdata(L, 2);
  int i, signum = (int)lua_tointeger(L, 3);
  lua_settop(L, 0);
  lua_pushlightuserdata(L, lp);
  lua_pushcclosure(L, sr__spawn, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, sg->fn);
  for (i = 0; sr_signames[i].name && sr_signames[i].num != signum; i++) {
  }
  lua_pushstring(L, sr_signames[i].name ? sr_signames[i].name : "?");
  lua_call(L, 2, 0);
  return 0;
}

/* The main thread's stack is free here, since callbacks run from uv_run,
** which no task ever calls. */
static void sr_signal_cb(uv_signal_t *h, int signum) {
  sr_signal *sg = (sr_signal *)h;
  sr_loop *lp = h->loop->data;
  lua_State *L = lp->L;
  if (L == NULL || !lua_checkstack(L, 4)) return;
  lua_pushcfunction(L, sr_signal_dispatch); /* (pushes allocate nothing) */
  lua_pushlightuserdata(L, lp);
  lua_pushlightuserdata(L, sg);
  lua_pushinteger(L, signum);
  if (lua_pcall(L, 3, 0, 0) != LUA_OK) {
    fprintf(stderr, "sockrun: cannot run a signal handler: %s\n",
            sr__error_text(L, -1));
    lua_pop(L, 1);
  }
}

/* sr.signal(name, fn): watch; sr.signal(name, nil): stop watching. */
static int sr_signal_watch(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  const char *name = luaL_checkstring(L, 1);
  sr_signal *sg;
  int i, err, fn;
  for (i = 0; sr_signames[i].name != NULL; i++)
    if (strcmp(sr_signames[i].name, name) == 0 ||
        strcmp(sr_signames[i].name + 3, name) == 0)
      break;
  if (sr_signames[i].name == NULL)
    return luaL_argerror(L, 1, lua_pushfstring(L, "unknown signal '%s'", name));
  if (!lua_isnil(L, 2)) luaL_checktype(L, 2, LUA_TFUNCTION);
  sg = lp->signals[sr_signames[i].num];
  if (sg != NULL) { /* replace or remove the existing watcher */
    luaL_unref(L, LUA_REGISTRYINDEX, sg->fn);
    sg->fn = LUA_NOREF;
    if (lua_isnil(L, 2)) {
      uv_close((uv_handle_t *)&sg->h, sr__free_close_cb);
      lp->signals[sr_signames[i].num] = NULL;
    } else {
      lua_settop(L, 2);
      sg->fn = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    lua_pushboolean(L, 1);
    return 1;
  }
  if (lua_isnil(L, 2)) {
    lua_pushboolean(L, 1);
    return 1;
  }
  lua_settop(L, 2);
  fn = luaL_ref(L, LUA_REGISTRYINDEX); /* first: it may raise */
  if ((sg = malloc(sizeof *sg)) == NULL) {
    luaL_unref(L, LUA_REGISTRYINDEX, fn);
    return sr__fail(L, UV_ENOMEM);
  }
  sg->fn = fn;
  uv_signal_init(&lp->uv, &sg->h);
  err = uv_signal_start(&sg->h, sr_signal_cb, sr_signames[i].num);
  if (err < 0) {
    luaL_unref(L, LUA_REGISTRYINDEX, fn);
    uv_close((uv_handle_t *)&sg->h, sr__free_close_cb);
    return sr__fail(L, err);
  }
  uv_unref((uv_handle_t *)&sg->h);
  lp->signals[sr_signames[i].num] = sg;
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg sr_signal_funcs[] = {{"signal", sr_signal_watch},
                                           {NULL, NULL}};

void sr__signal_open(lua_State *L, sr_loop *lp) {
  sr__setfuncs(L, sr_signal_funcs, lp);
}
