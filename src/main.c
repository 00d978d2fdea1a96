/*
** main.c -- the sockrun binary: runs a script (or -e code, or standard
** input) as the main task of a loop, as lua5.4 runs one, with sockrun and
** its Lua side built in so it works from any directory.
*/

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lualib.h"

#include "internal.h"

extern const struct sr_embedded {
  const char *name, *chunkname, *src;
  size_t len;
} sr_embedded[];

static const char *sr_progname = "sockrun";

static void sr_usage(FILE *f) {
  fprintf(f,
          "usage: %s [options] [script [args]]\n"
          "Available options are:\n"
          "  -e stat   execute string 'stat'\n"
          "  -i        enter the REPL after executing 'script'\n"
          "  -l mod    require library 'mod' into global 'mod'\n"
          "  -l g=mod  require library 'mod' into global 'g'\n"
          "  -w N      run the script in N worker processes sharing its\n"
          "            listening ports (SO_REUSEPORT)\n"
          "  -v        show version information\n"
          "  -h        show this help\n"
          "  --        stop handling options\n"
          "  -         stop handling options and execute stdin\n",
          sr_progname);
}

static int sr_embedded_loader(lua_State *L) {
  const struct sr_embedded *e = lua_touserdata(L, lua_upvalueindex(1));
  if (luaL_loadbuffer(L, e->src, e->len, e->chunkname) != LUA_OK)
    return lua_error(L);
  lua_pushstring(L, e->name);
  lua_call(L, 1, 1);
  return 1;
}

/* package.preload for sockrun.core and each embedded Lua module. */
static void sr_preload(lua_State *L) {
  const struct sr_embedded *e;
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_sockrun_core);
  lua_setfield(L, -2, "sockrun.core");
  for (e = sr_embedded; e->name != NULL; e++) {
    lua_pushlightuserdata(L, (void *)e);
    lua_pushcclosure(L, sr_embedded_loader, 1);
    lua_setfield(L, -2, e->name);
  }
  lua_pop(L, 1);
}

typedef struct {
  int argc;
  char **argv;
  int script; /* index of the script in argv, or 0 */
  int stdin_script;
  int interactive; /* end in the REPL */
  int workers;     /* -w N */
  int worker;      /* this process's number, 1..N (0 without -w) */
  sigset_t mask;   /* a worker's signal mask, once its handlers are set */
  sr_loop *loop;   /* the module's, once loaded */
} sr_args;

/* Set the global for "-l mod" or "-l g=mod"; the module is at the top. */
static void sr_main_setlib(lua_State *L, const char *val) {
  const char *eq = strchr(val, '=');
  if (eq)
    lua_pushlstring(L, val, (size_t)(eq - val));
  else
    lua_pushstring(L, val);
  lua_insert(L, -2);
  lua_setglobal(L, lua_tostring(L, -2));
  lua_pop(L, 1); /* the name */
}

/*
** The main task: -e and -l in order, then the script with its arguments.
** Chunks are called with lua_callk so they can block (yield the task).
** ctx says where to go on after each: > 0, the argv index of the next
** option (past the script index: all done); < 0, -(index of a -l value)
** whose module has just been required.
*/
static int sr_main_body_k(lua_State *L, int status, lua_KContext ctx) {
  sr_args *a = lua_touserdata(L, lua_upvalueindex(1));
  int i = (int)ctx, n, last = a->script ? a->script : a->argc;
  (void)status;
  if (i < 0) {
    i = -i;
    sr_main_setlib(L, a->argv[i]);
    i++;
  }
  for (; i < last; i++) {
    if (strcmp(a->argv[i], "-e") == 0) {
      const char *code = a->argv[++i];
      if (luaL_loadbuffer(L, code, strlen(code), "=(command line)") != LUA_OK)
        return lua_error(L);
      lua_callk(L, 0, 0, i + 1, sr_main_body_k);
    } else if (strcmp(a->argv[i], "-l") == 0) {
      const char *val = a->argv[++i];
      const char *eq = strchr(val, '=');
      lua_getglobal(L, "require");
      lua_pushstring(L, eq ? eq + 1 : val);
      lua_callk(L, 1, 1, -i, sr_main_body_k);
      sr_main_setlib(L, val);
    }
  }
  if (i == last) { /* the script, if any */
    i = last + 1;
    if (a->script != 0 || a->stdin_script) {
      if (luaL_loadfile(L, a->stdin_script ? NULL : a->argv[a->script]) !=
          LUA_OK)
        return lua_error(L);
      n = 0; /* the script's arguments, also its `...` */
      if (a->script)
        for (i = a->script + 1; i < a->argc; i++, n++)
          lua_pushstring(L, a->argv[i]);
      lua_callk(L, n, 0, last + 1, sr_main_body_k);
      i = last + 1;
    }
  }
  if (i == last + 1 && a->interactive) { /* then the REPL, in this task */
    lua_getglobal(L, "require");
    lua_pushliteral(L, "sockrun.repl");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "run");
    lua_callk(L, 0, 0, last + 2, sr_main_body_k);
  }
  return 0;
}

static int sr_main_body(lua_State *L) {
  sr_args *a = lua_touserdata(L, lua_upvalueindex(1));
  /* sr.run may be called from it (loop.c) */
  a->loop->binary_main = a->loop->current;
  return sr_main_body_k(L, LUA_OK, 1);
}

/* Global `arg`, as lua5.4 makes it. */
static void sr_create_arg(lua_State *L, sr_args *a) {
  int i, base = a->script ? a->script : a->argc;
  lua_createtable(L, a->argc - base, base + 1);
  for (i = 0; i < a->argc; i++) {
    lua_pushstring(L, a->argv[i]);
    lua_rawseti(L, -2, i - base);
  }
  lua_setglobal(L, "arg");
}

/* A bad command line, said as lua5.4 says it; then the usage follows. */
static int sr_bad_option(const char *fmt, const char *what) {
  fprintf(stderr, "%s: ", sr_progname);
  fprintf(stderr, fmt, what);
  fputc('\n', stderr);
  return -1;
}

static int sr_collect(int argc, char **argv, sr_args *a, int *interactive,
                      int *version) {
  int i;
  for (i = 1; i < argc; i++) {
    const char *o = argv[i];
    if (o[0] != '-') {
      a->script = i;
      return 0;
    }
    if (strcmp(o, "--") == 0) {
      if (i + 1 < argc) a->script = i + 1;
      return 0;
    }
    if (strcmp(o, "-") == 0) { /* the script is stdin; args follow */
      a->script = i;
      a->stdin_script = 1;
      return 0;
    }
    if (strcmp(o, "-e") == 0 || strcmp(o, "-l") == 0) {
      if (++i >= argc) return sr_bad_option("'%s' needs argument", o);
    } else if (strcmp(o, "-w") == 0) {
      char *end;
      long n;
      if (++i >= argc) return sr_bad_option("'%s' needs argument", o);
      n = strtol(argv[i], &end, 10);
      if (*end != '\0' || n < 1 || n > 1024)
        return sr_bad_option("-w takes a number of workers, 1 to 1024, "
                             "not '%s'", argv[i]);
      a->workers = (int)n;
    } else if (strcmp(o, "-i") == 0) {
      *interactive = 1;
    } else if (strcmp(o, "-v") == 0) {
      *version = 1;
    } else if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) {
      return 1;
    } else {
      return sr_bad_option("unrecognized option '%s'", o);
    }
  }
  return 0;
}

/* Run everything under a protected call: sr = require "sockrun", spawn
** the main task, run the loop. Returns the exit status. */
static int sr_pmain(lua_State *L) {
  sr_args *a = lua_touserdata(L, 1);
  sr_loop *lp;
  int failed;
  luaL_openlibs(L);
  sr_preload(L);
  sr_create_arg(L, a);
  /* lua5.4 switches to the generational collector (lua.c); the binary
  ** keeps Lua's incremental one: each young collection traverses every
  ** coroutine, a task per connection, so with 10,000 connections open a
  ** 64 KiB echo took 37% more instructions per block (bench/README). */
  lua_warning(L, "@on", 0); /* report errors in __gc, as lua5.4 -W does */
  lua_getglobal(L, "require");
  lua_pushliteral(L, "sockrun");
  lua_call(L, 1, 1);
  lua_getfield(L, -1, "_runner_setup");
  lua_pushinteger(L, a->worker);
  lua_pushinteger(L, a->workers);
  lua_call(L, 2, 0);
  if (a->worker > 0) sigprocmask(SIG_SETMASK, &a->mask, NULL);
  lua_getfield(L, LUA_REGISTRYINDEX, "sockrun.loop");
  lp = a->loop = lua_touserdata(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, -1, "spawn");
  lua_pushlightuserdata(L, a);
  lua_pushcclosure(L, sr_main_body, 1);
  lua_call(L, 1, 1); /* the main task */
  lua_getfield(L, -2, "run");
  lua_call(L, 0, 0);
  lp->binary_main = NULL;
  /* The loop is done and the exit is under way: a late SIGINT/SIGTERM
  ** (timeout(1) sends one to the process and one to its group) must not
  ** turn it into a death. Closing their watchers at teardown restores the
  ** default action, so block them: pending, they die with the process. */
  {
    sigset_t late;
    sigemptyset(&late);
    sigaddset(&late, SIGINT);
    sigaddset(&late, SIGTERM);
    sigprocmask(SIG_BLOCK, &late, NULL);
  }
  lua_getfield(L, -1, "status");
  lua_pushvalue(L, -2);
  lua_call(L, 1, 1);
  failed = strcmp(lua_tostring(L, -1), "failed") == 0;
  if (lp->dry && strcmp(lua_tostring(L, -1), "waiting") == 0) {
    /* as lua5.4 would raise at the top level for the same wait */
    fputs("sockrun: deadlock: the main chunk waits, and nothing is left "
          "that could end its wait\n",
          stderr);
    failed = 1;
  }
  lua_pushboolean(L, failed);
  return 1;
}

/* An unprotected error (none should reach here: everything runs under
** lua_pcall), reported before Lua aborts, as luaL_newstate's would. */
static int sr_panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  fprintf(stderr, "%s: PANIC: unprotected error in call to Lua API (%s)\n",
          sr_progname, msg != NULL ? msg : "error object is not a string");
  return 0;
}

/* Warnings on stderr as lua5.4 prints them, "Lua warning: " and the
** message's pieces; the control messages "@on" and "@off" (a message in
** one piece) switch them. */
static struct {
  int on;   /* printing */
  int cont; /* the last piece said more comes */
} sr_warn_state;

static void sr_warn(void *ud, const char *msg, int tocont) {
  (void)ud;
  if (!sr_warn_state.cont && !tocont && msg[0] == '@') {
    if (strcmp(msg + 1, "on") == 0) sr_warn_state.on = 1;
    if (strcmp(msg + 1, "off") == 0) sr_warn_state.on = 0;
    return;
  }
  if (sr_warn_state.on) {
    if (!sr_warn_state.cont) fputs("Lua warning: ", stderr);
    fputs(msg, stderr);
    if (!tocont) fputc('\n', stderr);
  }
  sr_warn_state.cont = tocont;
}

/* A server holds a descriptor per connection: take the hard limit on open
** files, not the usual soft 1024. */
static void sr_raise_nofile(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

/*
** -w N: fork N workers, each running the script as usual; sr.listen sets
** SO_REUSEPORT in them, so the kernel spreads connections over them. The
** parent runs no Lua: it waits, passes SIGINT/SIGTERM on (each worker then
** drains its servers), and exits when all have: 0 if all exited 0.
** Each worker gets exactly one of each signal the parent passes on: it has
** a process group of its own, so a terminal's Ctrl-C (sent to the
** foreground group) reaches the parent only, and a worker that got it
** twice would take the second for "exit at once". SIGHUP (the terminal
** went away) is passed on as SIGTERM, to drain too. A parent that dies any
** other way (SIGKILL) takes its workers with it (PR_SET_PDEATHSIG), so
** none is left serving. Returns -1 in a worker, which goes on to run the
** script.
*/
static int sr_run_workers(sr_args *a) {
  pid_t *pids = calloc((size_t)a->workers, sizeof *pids), parent = getpid();
  sigset_t set, old;
  int i, live = 0, status = 0;
  if (pids == NULL) return 1;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGCHLD);
  sigprocmask(SIG_BLOCK, &set, &old); /* taken with sigwaitinfo below */
  signal(SIGCHLD, SIG_DFL); /* ignored, exited workers would go unseen */
  fflush(NULL);
  for (i = 0; i < a->workers; i++) {
    pid_t p = fork();
    if (p < 0) {
      int j;
      perror("sockrun: fork");
      status = 1;
      for (j = 0; j < i; j++) kill(pids[j], SIGTERM); /* they drain */
      break;
    }
    if (p == 0) {
      setpgid(0, 0);
      if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent)
        _exit(1); /* the parent is gone already */
      /* SIGINT and SIGTERM stay blocked until the script's handlers
      ** exist (sr_pmain): one the parent passes on at once must drain
      ** this worker, not kill it */
      a->mask = old;
      sigdelset(&set, SIGINT);
      sigdelset(&set, SIGTERM);
      sigprocmask(SIG_UNBLOCK, &set, NULL);
      free(pids);
      a->worker = i + 1;
      return -1;
    }
    setpgid(p, p); /* as the child does: whichever runs first */
    pids[i] = p;
    live++;
  }
  while (live > 0) {
    siginfo_t info;
    int sig = sigwaitinfo(&set, &info), st, j;
    pid_t p;
    if (sig == SIGINT || sig == SIGTERM || sig == SIGHUP) {
      for (j = 0; j < a->workers; j++)
        if (pids[j] > 0) kill(pids[j], sig == SIGHUP ? SIGTERM : sig);
      continue;
    }
    while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
      for (j = 0; j < a->workers; j++)
        if (pids[j] == p) pids[j] = 0;
      live--;
      if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) status = 1;
    }
  }
  free(pids);
  return status;
}

int main(int argc, char **argv) {
  sr_args a;
  int interactive = 0, version = 0, r, status;
  lua_State *L;
  sr_pool *pool;
  memset(&a, 0, sizeof a);
  a.argc = argc;
  a.argv = argv;
  if (argv[0] && argv[0][0]) sr_progname = argv[0];
  r = sr_collect(argc, argv, &a, &interactive, &version);
  if (r != 0) { /* -h asked for it: on stdout; else after the error */
    sr_usage(r < 0 ? stderr : stdout);
    return r < 0 ? 1 : 0;
  }
  if (version) {
    printf("sockrun %s (%s, libuv %s)\n", SR_VERSION, LUA_RELEASE,
           uv_version_string());
    if (a.script == 0 && !a.stdin_script && !interactive) {
      int i, only_v = 1;
      for (i = 1; i < argc; i++)
        if (strcmp(argv[i], "-v") != 0) only_v = 0;
      if (only_v) return 0;
    }
  }
  a.interactive = interactive;
  if (a.script == 0 && !a.stdin_script) { /* as lua5.4: no script, no -e */
    int has_e = 0, i;
    for (i = 1; i < argc; i++)
      if (strcmp(argv[i], "-e") == 0) has_e = 1;
    if (!has_e) a.interactive = 1;
  }
  if (a.workers > 0) {
    if (a.interactive || (a.script == 0 && !a.stdin_script) ||
        a.stdin_script) {
      fprintf(stderr, "%s: -w needs a script file\n", sr_progname);
      return 1;
    }
    if ((r = sr_run_workers(&a)) >= 0) return r;
  }
  /* A peer that goes away must not kill the process. */
  signal(SIGPIPE, SIG_IGN);
  sr_raise_nofile();
  /* The state allocates from a pool of ours (alloc.c), freed after it. */
  pool = sr__pool_new();
  L = pool != NULL ? lua_newstate(sr__alloc, pool) : NULL;
  if (L == NULL) {
    fprintf(stderr, "%s: cannot create state: not enough memory\n",
            sr_progname);
    sr__pool_free(pool);
    return 1;
  }
  lua_atpanic(L, sr_panic);
  lua_setwarnf(L, sr_warn, NULL);
  lua_pushcfunction(L, sr_pmain);
  lua_pushlightuserdata(L, &a);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
    fprintf(stderr, "%s: %s\n", sr_progname, sr__error_text(L, -1));
    status = 1;
  } else {
    status = lua_toboolean(L, -1) ? 1 : 0;
  }
  lua_close(L);
  sr__pool_free(pool);
  return status;
}
