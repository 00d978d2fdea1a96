/*
** loop.c -- the libuv loop behind the module: running it (sr.run, sr.step,
** sr.stop), exposing it to a host's own main loop (sr.backend_fd,
** sr.backend_timeout), and tearing it down when the Lua state closes.
*/

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Every uv_run goes through here: the depth count is how sr__self knows
** that a blocking call must not drive the loop again. */
int sr__run(sr_loop *lp, lua_State *L, uv_run_mode mode) {
  int alive;
  (void)L;
  lp->running++;
  alive = uv_run(&lp->uv, mode);
  lp->running--;
  return alive;
}

/* A socket finds its loop from its handle's loop (internal.h). */
_Static_assert(offsetof(sr_loop, uv) == 0, "uv comes first in sr_loop");

/* Send what tasks gathered on each socket, one write a socket. Called
** each time a task gives control back (sr_task_resume): it has worked
** through what it could, so the replies it made leave together. */
void sr__loop_flush(sr_loop *lp) {
  sr_socket *s;
  while (lp->dirty.n > 0) {
    s = lp->dirty.v[lp->dirty.n - 1];
    if (sr__stream_flush(s) < 0) sr__socket_wake(&s->writer, 0);
  }
}

/*
** Whether Lua is running a finalizer (__gc) now: Lua 5.4.4 stops its
** collector while it does, and answers -1 to every lua_gc request then.
** A finalizer runs at any allocation, in the middle of a sockrun call
** that holds a socket's struct: if it ran the loop, a close callback
** could free that struct under the call. So it may not.
*/
int sr__in_finalizer(lua_State *L) {
  return lua_gc(L, LUA_GCISRUNNING) < 0;
}

static void sr_check_can_run(lua_State *L, sr_loop *lp, const char *what) {
  if (lp->running > 0 || lp->current != NULL)
    luaL_error(L,
               "%s cannot be called from inside a task or callback "
               "(the loop is already running)",
               what);
  if (sr__in_finalizer(L))
    luaL_error(L, "%s cannot be called from a finalizer (__gc)", what);
}

static int sr_run_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lua_pushboolean(L, 1);
  return 1;
}

/*
** sr.run([fn, ...]): spawn fn if given, then run until no work is left or
** sr.stop(). A stop asked for before the loop runs (by fn's first steps,
** say) is kept, so sr.run returns at once. In the binary, whose loop runs
** already, the main chunk may call it too, so that a script written for
** lua5.4 runs unchanged: it then waits for the same two things (the outer
** run below wakes it), and the code after it runs once they happen.
*/
static int sr_run(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  int in_main = lp->binary_main != NULL && lp->current == lp->binary_main &&
                lp->current->co == L;
  if (!in_main) sr_check_can_run(L, lp, "sr.run");
  if (!lua_isnoneornil(L, 1)) {
    lua_pushlightuserdata(L, lp);
    lua_pushcclosure(L, sr__spawn, 1);
    lua_insert(L, 1);
    lua_call(L, lua_gettop(L) - 1, 0);
  }
  if (in_main) {
    sr_task *t = sr__self(L, lp);
    lp->run_waiter = t;
    sr__wait(L, t, -1, 1, 0, sr_run_k);
    return sr_run_k(L, LUA_YIELD, 0);
  }
  for (;;) {
    int alive = !lp->stopped && sr__run(lp, L, UV_RUN_DEFAULT) != 0;
    if (lp->run_waiter != NULL && (lp->stopped || !alive)) {
      sr_task *w = lp->run_waiter;
      lp->run_waiter = NULL;
      /* after a stop, the binary exits once the rest of the main chunk
      ** has run (task.c stops the loop when it ends), whatever else is
      ** left, as it does for a chunk without sr.run */
      if (lp->stopped) lp->stop_with_main = 1;
      lp->stopped = 0;
      sr__wake(w, 0);
      continue;
    }
    if (!alive) break;
  }
  lp->dry = !lp->stopped;
  lp->stopped = 0;
  lua_pushboolean(L, 1);
  return 1;
}

static int sr_step(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  sr_check_can_run(L, lp, "sr.step");
  lua_pushboolean(L, sr__run(lp, L, UV_RUN_NOWAIT) != 0);
  return 1;
}

static int sr_stop(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  lp->stopped = 1;
  uv_stop(&lp->uv);
  lua_pushboolean(L, 1);
  return 1;
}

static int sr_now(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  if (lp->running == 0) uv_update_time(&lp->uv);
  lua_pushnumber(L, (lua_Number)uv_now(&lp->uv) / 1000.0);
  return 1;
}

static int sr_backend_fd(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  lua_pushinteger(L, uv_backend_fd(&lp->uv));
  return 1;
}

static int sr_backend_timeout(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  lua_pushinteger(L, uv_backend_timeout(&lp->uv));
  return 1;
}

/* Live sockets and tasks: lets tests check nothing was left behind. */
static int sr_counts(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  lua_pushinteger(L, lp->nsockets);
  lua_pushinteger(L, lp->ntasks);
  lua_pushinteger(L, lp->nflushing);
  return 3;
}

/* ---------------------------------------------------------------------- */
/* Teardown, when the Lua state closes (the loop userdata is finalized     */
/* last, having been created first).                                      */

/* Teardown closes sockets first (pass 1), each with its linger timer, so
** that no later callback of theirs finds a timer the walk already closed;
** then everything else (pass 2). */
static int sr_is_socket(uv_handle_t *h) {
  return h->type == UV_NAMED_PIPE || h->type == UV_TTY || h->type == UV_POLL;
}

static void sr_teardown_walk_cb(uv_handle_t *h, void *arg) {
  int pass = *(int *)arg;
  if (uv_is_closing(h)) return;
  if (pass == 1 && sr_is_socket(h)) {
    sr_socket *s = h->data;
    s->closed = 1;
    s->closing = 1;
    s->reader = s->writer = NULL; /* no task is woken at teardown */
    sr__socket_linger_stop(s);
    uv_close(h, sr__socket_close_cb);
    if (h->type == UV_POLL) close(s->fd);
  } else if (pass == 2) {
    /* task timers and signal watchers: malloc'd, handle first; the ready
    ** queue's idle handle and the reaper's check are part of the loop */
    sr_loop *lp = h->loop->data;
    int own = h == (uv_handle_t *)&lp->ready_idle ||
              h == (uv_handle_t *)&lp->reap ||
              h == (uv_handle_t *)&lp->reap_idle;
    uv_close(h, own ? NULL : sr__free_close_cb);
  }
}

sr_loop *sr__loop_alive(lua_State *L, void *p) {
  sr_loop *lp = p;
  if (lp->L == NULL)
    luaL_error(L, "sockrun is closed: the Lua state is closing");
  return lp;
}

static int sr_loop_gc(lua_State *L) {
  sr_loop *lp = lua_touserdata(L, 1);
  int i, pass;
  if (lp->L == NULL) return 0;
  lp->L = NULL; /* from here on no callback may touch Lua */
  uv_tty_reset_mode(); /* a REPL may have left the terminal raw */
  sr__tty_forget(lp);
  sr__socket_drop_kept(lp); /* (their handles are closing: the walk skips) */
  pass = 1;
  uv_walk(&lp->uv, sr_teardown_walk_cb, &pass);
  pass = 2;
  uv_walk(&lp->uv, sr_teardown_walk_cb, &pass);
  sr__socket_reap(lp); /* closed connections that had no handle */
  /* The first run may only clear a stop flag left by sr.stop(); a few more
  ** let close callbacks and thread-pool lookups finish. (Every handle is
  ** ours and closed above, so the loop does close.) */
  for (i = 0; i < 8 && uv_loop_close(&lp->uv) == UV_EBUSY; i++)
    uv_run(&lp->uv, UV_RUN_DEFAULT);
  sr__dns_free_answers(lp);
  while (lp->nspare > 0) free(lp->spare[--lp->nspare]);
  free(lp->dirty.v);
  free(lp->unpolled.v);
  return 0;
}

static const luaL_Reg sr_loop_funcs[] = {
    {"run", sr_run},
    {"step", sr_step},
    {"stop", sr_stop},
    {"now", sr_now},
    {"backend_fd", sr_backend_fd},
    {"backend_timeout", sr_backend_timeout},
    {"counts", sr_counts},
    {NULL, NULL}};

/*
** libuv aborts rather than close a descriptor below 3 (it takes one for
** stdin, stdout or stderr). A process started with one of them closed
** would hand the lowest free number to the loop's epoll descriptor or to
** a socket, and die at its close: keep them taken by /dev/null, as a
** daemon does.
*/
static void sr_keep_stdio_taken(void) {
  int fd;
  for (fd = 0; fd <= 2; fd++) {
    int got;
    if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
    got = open("/dev/null", O_RDWR); /* the lowest free number: fd */
    if (got > 2) close(got);         /* not ours to fill after all */
  }
}

/* The loop of this Lua state: made once, kept in the registry. */
static sr_loop *sr_loop_get(lua_State *L) {
  sr_loop *lp;
  if (lua_getfield(L, LUA_REGISTRYINDEX, "sockrun.loop") == LUA_TUSERDATA) {
    lp = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return lp;
  }
  lua_pop(L, 1);
  lp = lua_newuserdatauv(L, sizeof *lp, 0);
  memset(lp, 0, sizeof *lp);
  sr_keep_stdio_taken();
  if (uv_loop_init(&lp->uv) < 0)
    luaL_error(L, "cannot initialise the event loop");
  lp->uv.data = lp;
  sr__task_loop_init(lp);
  sr__socket_loop_init(lp);
  lua_rawgeti(L, LUA_REGISTRYINDEX, LUA_RIDX_MAINTHREAD);
  lp->L = lua_tothread(L, -1);
  lua_pop(L, 1);
  lp->onerror_ref = LUA_NOREF;
  lp->main.loop = lp;
  lp->main.ref = LUA_NOREF;
  lp->main.state = SR_TASK_RUNNING;
  lua_createtable(L, 0, 1); /* a __gc from here on: the loop is made */
  lua_pushcfunction(L, sr_loop_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_setfield(L, LUA_REGISTRYINDEX, "sockrun.loop");
  return lp;
}

int luaopen_sockrun_core(lua_State *L) {
  sr_loop *lp = sr_loop_get(L);
  lua_newtable(L);
  sr__setfuncs(L, sr_loop_funcs, lp);
  sr__task_open(L, lp);
  sr__socket_open(L, lp);
  sr__dns_open(L, lp);
  sr__signal_open(L, lp);
  sr__tty_open(L, lp);
  lua_pushliteral(L, SR_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
