/*
** task.c -- tasks: coroutines scheduled by sockrun. How a blocking call
** waits (yield inside a task, drive the loop outside one), how it is woken
** from libuv callbacks, and sr.spawn, sr.sleep, task:join, task:cancel.
*/

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/*
** User values of a task userdata. The coroutine stays alive as long as the
** task object does: join reads a finished task's results from its stack.
** A failed task's coroutine is dead, and its error object takes its place.
** A connection handler's connection is anchored in the second one for as
** long as the task runs (the handler itself may drop its reference, and a
** script's coroutine.close on the task's coroutine must not free it).
*/
#define SR_TASK_UV_THREAD 1 /* the coroutine; a failed task's error object */
#define SR_TASK_UV_CONN 2   /* a handler's connection (sr_serve) */

static void sr_task_resume(sr_task *t, lua_State *from, int nargs);

/* Waits this long or longer (in ms) have no deadline: 2^62, so that the
** deadline, loop time added, still fits a uint64_t. */
#define SR_FOREVER_MS 4611686018427387904.0

/* Wakes nested deeper than this (a task's end waking its joiner, whose end
** wakes its own, and so on down a chain) are resumed from the woken task's
** timer instead, so that such a chain cannot overflow the C stack. */
#define SR_WAKE_DEPTH 32

/*
** A task's timer, allocated on first use, so that a task that never
** sleeps, times out or joins costs none; with it, the deadline of the
** operation it bounds, and the lists of join: a task joined lists the
** tasks waiting for its end here, and each of them is linked in that list
** through its own block. A wait due at once (a bare yield, a wake
** passed on to the next turn, a timeout already up) goes to the loop's
** ready queue instead: libuv 1.44 runs a timer armed for 0 ms from a timer
** callback in the same pass, so a task yielding in a loop would run on and
** on without the loop ever polling for I/O. The queue runs from an idle
** handle (which also keeps the poll from blocking) once a turn, the tasks
** queued before the turn began: one that queues itself again goes on at
** the next turn, after the loop has polled.
*/
struct sr_task_timer {
  uv_timer_t uv; /* first: freed as the handle, by sr__free_close_cb */
  struct sr_task_timer *next, **pprev; /* in lp->ready; pprev NULL if not */
  unsigned turn; /* the ready_turn it was queued in */
  uint64_t deadline;    /* loop time (ms) the current operation ends at */
  sr_task *joiners;     /* tasks waiting in join() for this one */
  sr_task *next_joiner; /* link in the joined task's list */
};

static void sr_task_timer_cb(uv_timer_t *timer) {
  sr_task *t = timer->data;
  if (t == NULL) return;
  if (t->deferred) { /* woken already (sr__wake) */
    t->deferred = 0;
    t->state = SR_TASK_RUNNING;
    sr_task_resume(t, NULL, 0);
  } else {
    sr__wake(t, UV_ETIMEDOUT);
  }
}

static void sr_ready_remove(sr_loop *lp, sr_task_timer *tt) {
  if (tt->pprev == NULL) return;
  if (tt->next != NULL)
    tt->next->pprev = tt->pprev;
  else
    lp->ready_tail = tt->pprev;
  *tt->pprev = tt->next;
  tt->pprev = NULL;
  if (lp->ready == NULL) uv_idle_stop(&lp->ready_idle);
}

static void sr_ready_cb(uv_idle_t *idle) {
  sr_loop *lp = idle->data;
  unsigned turn = ++lp->ready_turn;
  sr_task_timer *tt;
  while ((tt = lp->ready) != NULL && tt->turn != turn) {
    sr_ready_remove(lp, tt);
    sr_task_timer_cb(&tt->uv);
  }
}

void sr__task_loop_init(sr_loop *lp) {
  lp->ready = NULL;
  lp->ready_tail = &lp->ready;
  uv_idle_init(&lp->uv, &lp->ready_idle);
  lp->ready_idle.data = lp;
}

/* t's timer block, allocated if it has none yet; NULL when out of
** memory. */
static sr_task_timer *sr_task_timer_of(sr_task *t) {
  sr_task_timer *tt = t->timer;
  if (tt == NULL) {
    if ((tt = malloc(sizeof *tt)) == NULL) return NULL;
    uv_timer_init(&t->loop->uv, &tt->uv);
    tt->uv.data = t;
    tt->pprev = NULL;
    tt->joiners = tt->next_joiner = NULL;
    t->timer = tt;
  }
  return tt;
}

/* Have t's wait end in ms milliseconds: from its timer, or when due at
** once from the ready queue, at the end of the queue. */
static int sr_task_arm(sr_task *t, uint64_t ms) {
  sr_loop *lp = t->loop;
  sr_task_timer *tt = sr_task_timer_of(t);
  if (tt == NULL) return UV_ENOMEM;
  if (ms > 0) {
    sr_ready_remove(lp, tt);
    return uv_timer_start(&tt->uv, sr_task_timer_cb, ms, 0);
  }
  uv_timer_stop(&tt->uv);
  if (tt->pprev == NULL) {
    if (lp->ready == NULL) uv_idle_start(&lp->ready_idle, sr_ready_cb);
    tt->next = NULL;
    tt->pprev = lp->ready_tail;
    *lp->ready_tail = tt;
    lp->ready_tail = &tt->next;
    tt->turn = lp->ready_turn;
  }
  return 0;
}

static void sr_task_disarm(sr_task *t) {
  if (t->timer != NULL) {
    uv_timer_stop(&t->timer->uv);
    sr_ready_remove(t->loop, t->timer);
  }
}

static void sr_task_close_timer(sr_task *t) {
  if (t->timer != NULL) {
    sr_ready_remove(t->loop, t->timer);
    t->timer->uv.data = NULL;
    uv_close((uv_handle_t *)&t->timer->uv, sr__free_close_cb);
    t->timer = NULL;
  }
}

static void sr_join_detach(sr_task *t);

/* Take the task off whatever it waits on. */
static void sr_task_detach(sr_task *t) {
  switch (t->waits_on) {
    case SR_WAIT_SOCKET: sr__socket_detach(t); break;
    case SR_WAIT_DNS: sr__dns_detach(t); break;
    case SR_WAIT_JOIN: sr_join_detach(t); break;
    default: break;
  }
  t->waits_on = SR_WAIT_NONE;
  t->wait_on = NULL;
  t->deferred = 0;
  if (t->loop->run_waiter == t) t->loop->run_waiter = NULL;
  sr_task_disarm(t);
}

/*
** The task of the running context, which is about to block. Inside a task
** it is that task; outside any task, with the loop idle, it is the loop's
** pseudo-task, which waits by driving the loop. Anything else (a foreign
** coroutine while the loop runs, a C-call boundary in a task) cannot
** block, and re-entering uv_run there would break the loop: raise instead.
*/
sr_task *sr__self(lua_State *L, sr_loop *lp) {
  sr_task *t = lp->current;
  if (t != NULL && t->co == L) {
    if (!lua_isyieldable(L)) {
      if (sr__in_finalizer(L)) /* asked only here: it costs a call */
        luaL_error(L, "cannot block in a finalizer (__gc)");
      luaL_error(L,
                 "cannot block across a C-call boundary (a sort comparator, "
                 "a gsub function, a metamethod called from C); use "
                 "sr.spawn");
    }
    return t;
  }
  if (lp->running > 0 || t != NULL)
    luaL_error(L,
               "cannot block outside a sockrun task while the loop is "
               "running (a coroutine sockrun did not create); use "
               "sr.spawn");
  if (lp->main.state == SR_TASK_WAITING)
    luaL_error(L, "cannot block: a blocking call is already in progress");
  if (sr__in_finalizer(L)) /* it would run the loop: see loop.c */
    luaL_error(L, "cannot block in a finalizer (__gc)");
  return &lp->main;
}

/* Whether the wait the running context just came back from timed out:
** the current task's, or outside tasks the loop-driving pseudo-task's. */
int sr__timedout(sr_loop *lp) {
  sr_task *t = lp->current ? lp->current : &lp->main;
  return t->wake == UV_ETIMEDOUT;
}

/*
** Now, on the loop's clock (ms), read afresh: the loop's own time is that
** of its last poll, and a script that computed for longer than a timeout
** must still get all of it. The loop's time is left alone: advanced from
** a timer callback, it would make timers re-armed earlier in the same
** pass due again, and tasks that compute longer than they sleep would
** keep libuv in its timers forever, never polling. (Both clocks are
** CLOCK_MONOTONIC; libuv's may be the coarse one, a few ms behind.)
*/
static uint64_t sr_clock_now(sr_loop *lp) {
  uint64_t fresh = uv_hrtime() / 1000000, loop = uv_now(&lp->uv);
  return fresh > loop ? fresh : loop;
}

/*
** Suspend t until sr__wake. fresh starts a new operation, whose deadline is
** timeout seconds away (< 0: none); a retry of the same operation (fresh
** == 0) keeps the deadline, so a trickle of data cannot extend it. Inside
** a task this yields and never returns: k runs on resumption. Outside, it
** drives the loop and returns 0 once woken; the caller then retries.
*/
int sr__wait(lua_State *L, sr_task *t, double timeout, int fresh,
             lua_KContext ctx, lua_KFunction k) {
  sr_loop *lp = t->loop;
  if (fresh) {
    /* A timeout beyond what a uint64_t of milliseconds holds (math.huge,
    ** say) is none: the wait lasts until woken. */
    double ms = timeout * 1000.0 + 0.5;
    t->has_deadline = timeout >= 0 && ms < SR_FOREVER_MS;
    /* (the deadline is kept in the timer block: none, none to keep) */
    if (t->has_deadline && sr_task_timer_of(t) != NULL)
      t->timer->deadline = sr_clock_now(lp) + (uint64_t)ms;
  }
  t->wake = 0;
  if (t->has_deadline) {
    uint64_t now = uv_now(&lp->uv);
    int err = UV_ENOMEM;
    if (t->timer != NULL) {
      uint64_t deadline = t->timer->deadline;
      err = sr_task_arm(t, deadline > now ? deadline - now : 0);
    }
    if (err < 0) {
      t->has_deadline = 0;
      sr_task_detach(t);
      luaL_error(L, "cannot arm a timer: %s", uv_strerror(err));
    }
  }
  t->state = SR_TASK_WAITING;
  if (t->co != NULL) return lua_yieldk(L, 0, ctx, k);
  t->woken = 0;
  while (!t->woken) {
    int alive = sr__run(lp, L, UV_RUN_ONCE);
    if (!t->woken && !alive) {
      sr_task_detach(t);
      t->state = SR_TASK_RUNNING;
      luaL_error(L, "deadlock: nothing left that could end this wait");
    }
  }
  return 0;
}

/* End t's wait: status 0, or why (UV_ETIMEDOUT...). Exactly once per wait:
** a task no longer waiting is left alone. */
static void sr_task_wake(sr_task *t, int status, int later) {
  sr_loop *lp = t->loop;
  if (t->state != SR_TASK_WAITING || t->deferred || lp->L == NULL) return;
  sr_task_detach(t);
  t->wake = status;
  if (t->co == NULL) {
    /* The loop is being driven for this wait: make this uv_run return.
    ** libuv runs due timers before it polls, so a wake from one of them
    ** would otherwise still block in the poll that follows. */
    t->state = SR_TASK_RUNNING;
    t->woken = 1;
    uv_stop(&lp->uv);
    return;
  }
  if ((later || lp->depth >= SR_WAKE_DEPTH) && sr_task_arm(t, 0) == 0) {
    t->deferred = 1; /* still waiting, for its timer */
    return;
  }
  t->state = SR_TASK_RUNNING;
  sr_task_resume(t, NULL, 0);
}

void sr__wake(sr_task *t, int status) { sr_task_wake(t, status, 0); }

/* The same, but t resumes from its timer, in a turn of the loop of its
** own: for a wake from where no coroutine may be resumed (a finalizer). */
void sr__wake_later(sr_task *t, int status) { sr_task_wake(t, status, 1); }

/* A handler's end: its connection closed (after its own to-be-closed
** variables ran, as a <close> around it would). */
static void sr_task_drop_conn(sr_task *t) {
  sr__socket_close_slot(t->conn);
  t->conn = NULL;
}

/* Reset t's coroutine, which runs its pending to-be-closed variables
** (`local s <close>` sockets get closed), then close a handler's
** connection; returns lua_resetthread's status. */
static int sr_task_reset(sr_task *t) {
  int st = lua_resetthread(t->co);
  if (t->conn != NULL) sr_task_drop_conn(t);
  return st;
}

/* Close what t owns and wake every task joined on it, now that it ended. */
static void sr_task_finish(sr_task *t) {
  sr_loop *lp = t->loop;
  sr_task *j;
  lp->ntasks--;
  if (t == lp->binary_main && lp->stop_with_main) { /* (loop.c) */
    lp->stopped = 1;
    uv_stop(&lp->uv);
  }
  if (t->conn != NULL) sr_task_drop_conn(t);
  /* (a joiner is woken with its block in place: it is on the list) */
  while (t->timer != NULL && (j = t->timer->joiners) != NULL) {
    t->timer->joiners = j->timer->next_joiner;
    j->timer->next_joiner = NULL;
    j->waits_on = SR_WAIT_NONE; /* already unlinked */
    sr__wake(j, 0);
  }
  sr_task_close_timer(t);
  if (lp->L != NULL) luaL_unref(lp->L, LUA_REGISTRYINDEX, t->ref);
  t->ref = LUA_NOREF;
}

/* Hand a failed task's traceback (at the top of L) to sr.onerror, or print
** it; the error object is at 1 and the task userdata at 2. */
static void sr_task_report(sr_loop *lp, lua_State *L) {
  if (lp->onerror_ref != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, lp->onerror_ref);
    lua_pushvalue(L, 1);
    lua_pushvalue(L, -3); /* traceback */
    lua_pushvalue(L, 2);
    if (lua_pcall(L, 3, 0, 0) == LUA_OK) return;
    fprintf(stderr, "sockrun: error in sr.onerror: %s\n", sr__error_text(L, -1));
    lua_pop(L, 1);
  }
  fprintf(stderr, "sockrun: %s\n", sr__error_text(L, -1));
  fflush(stderr);
}

/* What sr_task_failed gathers under its protected calls. */
typedef struct {
  sr_task *t;
  int err, tb; /* registry refs: the first error object, its traceback */
} sr_failure;

/* Protected, on the main thread: refs to the error object (at 2) and to
** the traceback of the task's dead coroutine, whose stack Lua left as it
** was where the error happened. */
static int sr_failure_traceback(lua_State *L) {
  sr_failure *f = lua_touserdata(L, 1);
  const char *msg;
  lua_pushvalue(L, 2);
  f->err = luaL_ref(L, LUA_REGISTRYINDEX); /* to tell if a <close> replaces it */
  msg = lua_tostring(L, 2);
  if (msg == NULL)
    msg = lua_pushfstring(L, "(error object is a %s value)",
                          luaL_typename(L, 2));
  luaL_traceback(L, f->t->co, msg, 0);
  f->tb = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* Protected, on the reset coroutine, with the error object (1), the task
** (2) and the failure (3): the traceback to report, then the report. */
static int sr_failure_report(lua_State *co) {
  sr_failure *f = lua_touserdata(co, 3);
  lua_settop(co, 2);
  if (f->tb == LUA_NOREF) {
    luaL_tolstring(co, 1, NULL);
  } else {
    lua_rawgeti(co, LUA_REGISTRYINDEX, f->err);
    if (!lua_rawequal(co, 1, -1)) {
      /* a to-be-closed variable raised while closing: its error is the
      ** task's; the traceback is the first error's, and says so */
      luaL_tolstring(co, 1, NULL);
      lua_pushliteral(co, "\n(raised closing a to-be-closed variable, after: ");
      lua_rawgeti(co, LUA_REGISTRYINDEX, f->tb);
      lua_pushliteral(co, ")");
      lua_concat(co, 4);
    } else {
      lua_rawgeti(co, LUA_REGISTRYINDEX, f->tb);
    }
    lua_remove(co, -2);
  }
  sr_task_report(f->t->loop, co);
  return 0;
}

/*
** The task's function raised; its error object is at the top of co. Take
** the traceback, then reset the coroutine: that runs its pending
** to-be-closed variables (an error in one of them replaces the error
** object, as Lua's own rule for them says) and leaves the error object
** alone on a fresh stack, where the sr.onerror hook runs. A handler's
** connection is closed before the hook, so what the handler gathered
** leaves even if the hook exits. Then the error object replaces the
** coroutine in the task, for join. Tasks thus need no protected-call frame
** of their own, which keeps an idle task's stack small. What allocates
** runs under protected calls: this runs from libuv callbacks, and out of
** memory there must cost the report, not unwind out of uv_run.
*/
static void sr_task_failed(sr_task *t) {
  sr_loop *lp = t->loop;
  lua_State *co = t->co, *L = lp->L;
  sr_task *prev = lp->current;
  sr_failure f;
  f.t = t;
  f.err = f.tb = LUA_NOREF;
  t->state = SR_TASK_FAILED;
  t->nres = 0;
  /* (else the stack overflowed: no traceback) */
  if (lua_checkstack(co, 1) && lua_checkstack(L, 3)) {
    lua_pushcfunction(L, sr_failure_traceback); /* pushes that allocate */
    lua_pushlightuserdata(L, &f);                /* nothing */
    lua_pushvalue(co, -1);
    lua_xmove(co, L, 1);
    if (lua_pcall(L, 2, 0, 0) != LUA_OK) lua_pop(L, 1);
  }
  sr_task_reset(t); /* the error object at 1 */
  lua_settop(co, 1);
  lua_rawgeti(co, LUA_REGISTRYINDEX, t->ref); /* the task, at 2 */
  lp->current = t; /* a hook that blocks gets a clear error */
  lua_pushcfunction(co, sr_failure_report);
  lua_pushvalue(co, 1);
  lua_pushvalue(co, 2);
  lua_pushlightuserdata(co, &f);
  if (lua_pcall(co, 3, 0, 0) != LUA_OK) {
    fputs("sockrun: a task failed, and reporting it failed too (out of "
          "memory?)\n",
          stderr);
    lua_pop(co, 1);
  }
  lp->current = prev;
  luaL_unref(co, LUA_REGISTRYINDEX, f.tb);
  luaL_unref(co, LUA_REGISTRYINDEX, f.err);
  lua_pushvalue(co, 1);
  lua_setiuservalue(co, 2, SR_TASK_UV_THREAD);
  lua_settop(co, 0); /* a dead coroutine, no longer anchored: */
  t->co = NULL;      /* nothing uses it from here on */
}

/*
** Run t until it blocks, yields or ends: its first run, from L with nargs
** arguments on its stack, or (from NULL) its return from a wait. Then its
** coroutine must still be suspended in that wait: one that a script
** resumed or closed itself (coroutine.resume or coroutine.close on the
** coroutine a task runs in) is no longer sockrun's to resume or reset, so
** the task only ends, as cancelled, closing what it owns.
*/
static void sr_task_resume(sr_task *t, lua_State *from, int nargs) {
  sr_loop *lp = t->loop;
  sr_task *prev = lp->current;
  int nres, st;
  lp->depth++; /* until the end: finishing t wakes its joiners */
  if (from == NULL && lua_status(t->co) != LUA_YIELD) {
    fprintf(stderr,
            "sockrun: a task's coroutine was resumed or closed outside "
            "sockrun; the task is cancelled\n");
    t->state = SR_TASK_CANCELLED;
    t->nres = 0;
    sr_task_finish(t);
  } else {
    lp->current = t;
    st = lua_resume(t->co, from, nargs, &nres);
    lp->current = prev;
    if (st == LUA_YIELD) {
      if (t->state != SR_TASK_WAITING) {
        /* A bare coroutine.yield() in a task: let others run, then go on. */
        lua_pop(t->co, nres);
        t->has_deadline = 0;
        t->wake = 0;
        t->state = SR_TASK_WAITING;
        if (sr_task_arm(t, 0) < 0) t->state = SR_TASK_RUNNING;
      } /* else it waits in sr__wait */
    } else {
      if (st == LUA_OK) {
        t->state = SR_TASK_DONE;
        t->nres = nres;
      } else {
        sr_task_failed(t);
      }
      sr_task_finish(t);
    }
  }
  /* The task blocked, yielded or ended: it has worked through what it
  ** could, so what it (or its sr.onerror hook) gathered for writing
  ** leaves now (stream.c), one write per socket. Last, because a failed
  ** flush wakes the socket's writer, which may be any task. */
  if (lp->dirty.n > 0) sr__loop_flush(lp);
  lp->depth--;
}

/* The task metatable is also in the registry under this address: a task
** per connection sets it, and a light userdata key is a cheaper lookup
** than the name. */
static const char sr_task_mt_key = 0;

static sr_task *sr_check_task(lua_State *L, int arg) {
  sr_task *t = luaL_checkudata(L, arg, SR_TASK_MT);
  sr__loop_alive(L, t->loop); /* its timer is gone with the loop */
  return t;
}

/* A new task for the function at index 1 of L, with the nargs values
** above it as arguments; leaves the task userdata at the top of L and the
** function and arguments on the coroutine, ready to resume. */
static sr_task *sr_task_new(lua_State *L, sr_loop *lp, int nuv) {
  int n = lua_gettop(L);
  sr_task *t = lua_newuserdatauv(L, sizeof *t, nuv);
  lua_State *co;
  memset(t, 0, sizeof *t);
  t->loop = lp;
  t->ref = LUA_NOREF;
  t->state = SR_TASK_RUNNING;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &sr_task_mt_key);
  lua_setmetatable(L, -2);
  co = lua_newthread(L);
  lua_setiuservalue(L, -2, SR_TASK_UV_THREAD);
  t->co = co;
  if (!lua_checkstack(co, n)) luaL_error(L, "too many arguments for a task");
  lua_pushvalue(L, -1);
  t->ref = luaL_ref(L, LUA_REGISTRYINDEX); /* alive until it ends */
  lua_rotate(L, 1, 1); /* task below fn and args */
  lua_xmove(L, co, n); /* the coroutine runs fn itself: no wrapper frame */
  lp->ntasks++;
  return t;
}

static void sr_check_callable(lua_State *L, int arg) {
  if (lua_type(L, arg) != LUA_TFUNCTION && !luaL_getmetafield(L, arg, "__call"))
    luaL_typeerror(L, arg, "function");
}

int sr__spawn(lua_State *L) {
  int n = lua_gettop(L);
  sr_task *t;
  sr_check_callable(L, 1);
  lua_settop(L, n);
  t = sr_task_new(L, sr_getloop(L), 1);
  sr_task_resume(t, L, n - 1);
  return 1;
}

/*
** core.serve(handler, conn, ...): sr.listen's task for one connection,
** handler(conn, ...), which owns conn: it is closed when the task ends,
** however it ends, and core.handlers lists the task until then. Doing
** this here rather than in a Lua wrapper saves an idle connection a stack
** frame, a table and a set entry.
*/
static int sr_serve(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  int n = lua_gettop(L);
  sr_socket **conn;
  sr_task *t;
  luaL_checktype(L, 1, LUA_TFUNCTION);
  conn = sr__socket_slot(L, 2);
  t = sr_task_new(L, lp, 2);
  lua_pushvalue(t->co, 2); /* conn, now the coroutine's first argument */
  lua_xmove(t->co, L, 1);
  lua_setiuservalue(L, 1, SR_TASK_UV_CONN); /* the task is at 1 now */
  t->conn = conn;
  sr_task_resume(t, L, n - 1);
  return 1;
}

/*
** core.handlers(): the tasks core.serve started that have not ended, in
** no particular order. Every task alive is in the registry (its ref) and
** a handler's has its connection until it ends, so they are found there:
** a list of them would cost every connection two pointers, and only
** sr.shutdown asks.
*/
static int sr_handlers(lua_State *L) {
  lua_Integer i = 0;
  lua_newtable(L);
  lua_rawgetp(L, LUA_REGISTRYINDEX, &sr_task_mt_key);
  lua_pushnil(L);
  while (lua_next(L, LUA_REGISTRYINDEX)) {
    if (lua_type(L, -1) == LUA_TUSERDATA && lua_getmetatable(L, -1)) {
      int is_task = lua_rawequal(L, -1, -4);
      sr_task *t = lua_touserdata(L, -2);
      lua_pop(L, 1);
      if (is_task && t->conn != NULL) {
        lua_pushvalue(L, -1);
        lua_rawseti(L, -5, ++i);
      }
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return 1;
}

/* Off the list of the task t waits to join (both have their blocks:
** sr_task_join_k). */
static void sr_join_detach(sr_task *t) {
  sr_task *target = t->wait_on, **p;
  for (p = &target->timer->joiners; *p != NULL; p = &(*p)->timer->next_joiner) {
    if (*p == t) {
      *p = t->timer->next_joiner;
      break;
    }
  }
  t->timer->next_joiner = NULL;
}

static int sr_task_join_k(lua_State *L, int status, lua_KContext ctx) {
  sr_loop *lp = sr_getloop(L);
  sr_task *target = sr_check_task(L, 1);
  double timeout = sr__opt_seconds(L, 2);
  int fresh = (status == LUA_OK);
  for (;;) {
    sr_task *self;
    int i, base;
    switch (target->state) {
      case SR_TASK_DONE:
        base = lua_gettop(target->co) - target->nres;
        /* A finished coroutine holding results looks suspended to the
        ** coroutine library: a script's coroutine.close (or resume) of it
        ** can take them away. */
        if (base < 0)
          return sr__fail_msg(L, "the task's results are gone (its "
                                 "coroutine was closed or resumed)",
                              "ECANCELED");
        luaL_checkstack(L, target->nres, "too many results");
        for (i = 1; i <= target->nres; i++) {
          lua_pushvalue(target->co, base + i);
          lua_xmove(target->co, L, 1);
        }
        return target->nres;
      case SR_TASK_FAILED: /* nil, its message, "ETASK", the error object */
        /* still its coroutine: the failure is being handled (its <close>s
        ** run, its connection closes, waking others): wait for the end */
        if (target->co != NULL) break; /* (sr_task_failed ends with NULL) */
        luaL_pushfail(L);
        lua_getiuservalue(L, 1, SR_TASK_UV_THREAD);
        luaL_tolstring(L, -1, NULL);
        lua_pushliteral(L, "ETASK");
        lua_rotate(L, -3, -1);
        return 4;
      case SR_TASK_CANCELLED: return sr__fail(L, UV_ECANCELED);
      default: break;
    }
    self = sr__self(L, lp);
    if (!fresh && sr__timedout(lp)) return sr__fail(L, UV_ETIMEDOUT);
    if (self == target) luaL_error(L, "a task cannot join itself");
    if (sr_task_timer_of(self) == NULL || sr_task_timer_of(target) == NULL)
      return sr__fail(L, UV_ENOMEM);
    self->timer->next_joiner = target->timer->joiners;
    target->timer->joiners = self;
    self->wait_on = target;
    self->waits_on = SR_WAIT_JOIN;
    sr__wait(L, self, timeout, fresh, ctx, sr_task_join_k);
    fresh = 0;
  }
}

static int sr_task_join(lua_State *L) {
  return sr_task_join_k(L, LUA_OK, 0);
}

/* Cancels nested deeper than this raise instead (see sr_task_cancel). */
#define SR_CANCEL_DEPTH 200

/*
** Cancel a waiting task: take it off what it waits on and close its
** coroutine, which runs its to-be-closed variables (so `local s <close>`
** sockets get closed). A running task cannot be cut from outside.
*/
static int sr_task_cancel(lua_State *L) {
  sr_task *t = sr_check_task(L, 1);
  sr_loop *lp = t->loop;
  lua_Debug ar;
  int st;
  switch (t->state) {
    case SR_TASK_DONE:
    case SR_TASK_FAILED:
    case SR_TASK_CANCELLED: lua_pushboolean(L, 0); return 1;
    case SR_TASK_RUNNING:
      return luaL_error(L,
                        "cannot cancel a running task (it is the caller "
                        "or one of its callers)");
    case SR_TASK_WAITING: break;
  }
  if (lua_status(t->co) == LUA_OK && lua_getstack(t->co, 0, &ar))
    /* sockrun's to cancel no more: a script resumed it by hand, and it
    ** runs now (or resumed the caller) */
    return luaL_error(L, "cannot cancel a running task (its coroutine was "
                         "resumed outside sockrun)");
  /* Resetting runs the task's <close> handlers, which may cancel another
  ** task, whose handlers may cancel a third...: each nests in C. */
  if (lp->cancelling >= SR_CANCEL_DEPTH)
    return luaL_error(L, "cannot cancel: cancels nested too deeply (each "
                         "task's <close> cancelling the next, %d deep)",
                      SR_CANCEL_DEPTH);
  sr_task_detach(t);
  t->state = SR_TASK_CANCELLED;
  lp->cancelling++;
  st = sr_task_reset(t);
  lp->cancelling--;
  if (st != LUA_OK)
    fprintf(stderr, "sockrun: error closing cancelled task: %s\n",
            sr__error_text(t->co, -1));
  lua_settop(t->co, 0);
  t->nres = 0;
  sr_task_finish(t);
  lua_pushboolean(L, 1);
  return 1;
}

static const char *const sr_task_states[] = {"running", "waiting", "done",
                                             "failed", "cancelled"};

static int sr_task_status(lua_State *L) {
  sr_task *t = sr_check_task(L, 1);
  lua_pushstring(L, sr_task_states[t->state]);
  return 1;
}

static int sr_task_tostring(lua_State *L) {
  sr_task *t = sr_check_task(L, 1);
  lua_pushfstring(L, "sockrun.task(%s): %p", sr_task_states[t->state],
                  (void *)t);
  return 1;
}

static int sr_sleep_k(lua_State *L, int status, lua_KContext ctx) {
  (void)status;
  (void)ctx;
  lua_pushboolean(L, 1);
  return 1;
}

static int sr_sleep(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  double sec = luaL_checknumber(L, 1);
  sr_task *t;
  luaL_argcheck(L, sec >= 0 && sec == sec, 1, "seconds must be >= 0");
  t = sr__self(L, lp);
  sr__wait(L, t, sec, 1, 0, sr_sleep_k);
  return sr_sleep_k(L, LUA_YIELD, 0);
}

static int sr_current(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  if (lp->current == NULL || lp->current->co != L) return 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, lp->current->ref);
  return 1;
}

/* sr.onerror(fn | nil): true, and the hook it replaces (nil: the default),
** so that a library may chain to it or put it back. */
static int sr_onerror(lua_State *L) {
  sr_loop *lp = sr_getloop(L);
  int ref;
  if (!lua_isnoneornil(L, 1)) luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  ref = lua_isnil(L, 1) ? LUA_NOREF : luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushboolean(L, 1);
  if (lp->onerror_ref != LUA_NOREF)
    lua_rawgeti(L, LUA_REGISTRYINDEX, lp->onerror_ref);
  else
    lua_pushnil(L);
  luaL_unref(L, LUA_REGISTRYINDEX, lp->onerror_ref);
  lp->onerror_ref = ref;
  return 2;
}

static const luaL_Reg sr_task_methods[] = {{"join", sr_task_join},
                                           {"cancel", sr_task_cancel},
                                           {"status", sr_task_status},
                                           {NULL, NULL}};

static const luaL_Reg sr_task_funcs[] = {{"spawn", sr__spawn},
                                         {"sleep", sr_sleep},
                                         {"current", sr_current},
                                         {"onerror", sr_onerror},
                                         {"serve", sr_serve},
                                         {"handlers", sr_handlers},
                                         {NULL, NULL}};

/* Register the task metatable and functions into the table at the top.
** Tasks have no __gc: a finalizer would keep each ended task's coroutine,
** and all it references, alive for one more collection cycle, which under
** connection churn lets the heap run ahead of the incremental collector.
** At lua_close the loop's teardown closes their timers. */
void sr__task_open(lua_State *L, sr_loop *lp) {
  luaL_newmetatable(L, SR_TASK_MT);
  lua_pushvalue(L, -1);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &sr_task_mt_key);
  lua_newtable(L);
  sr__setfuncs(L, sr_task_methods, lp);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, sr_task_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
  sr__setfuncs(L, sr_task_funcs, lp);
}
