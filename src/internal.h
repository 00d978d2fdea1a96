/*
** internal.h -- what the C files of sockrun.core share.
** Nothing here is public API: the only exported symbol of the module is
** luaopen_sockrun_core.
*/

#ifndef SOCKRUN_INTERNAL_H
#define SOCKRUN_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <sys/socket.h>

#include <uv.h>

#include "lua.h"
#include "lauxlib.h"

#define SR_VERSION "0.1.0"

#define SR_SOCKET_MT "sockrun.socket"
#define SR_TASK_MT "sockrun.task"

/* A socket's write queue above this many bytes makes write() wait. */
#define SR_WRITE_HIGH_WATER (1024 * 1024)
/* Writes from tasks up to this size are gathered (see stream.c), while a
** socket has less than SR_GATHER_LIMIT gathered. */
#define SR_GATHER_MAX (16 * 1024)
#define SR_GATHER_LIMIT (64 * 1024)
/* A socket's first gather buffer is this large; the loop keeps up to
** SR_GATHER_SPARES of them between flushes instead of freeing them. */
#define SR_GATHER_FIRST 2048
#define SR_GATHER_SPARES 8
/* Reading goes on in the background until this many bytes are unread. */
#define SR_READ_HIGH_WATER (64 * 1024)
/* Default bound on a line read with "l"/"L" (s:setoption to change). */
#define SR_DEFAULT_MAXLINE (1024 * 1024)
/* How long a closed socket may take to flush its queued writes when it
** has no write timeout; then what is left is dropped. */
#define SR_CLOSE_LINGER_MS (30 * 1000)
/* Once such a socket's FIN is out, a peer that sends nothing for this long
** is taken as done with it (stream.c, sr__stream_linger). */
#define SR_CLOSE_QUIET_MS 2000
/* And when nothing was queued at the close, one that sends more than this
** meanwhile is not reading what we sent: it gets the reset that a close
** with bytes unread gives. (While our writes go out, a peer answering what
** it reads answers as much as we send: that drain is bounded in time.) */
#define SR_CLOSE_DRAIN_MAX (1024 * 1024)
/* Size of the loop-wide buffer every stream read lands in first. */
#define SR_READ_CHUNK (64 * 1024)
/* Reads a reader makes at once while each fills that buffer, before it
** waits on the poller like any other (fits read_ahead's 3 bits). */
#define SR_READ_AHEAD_MAX 7

typedef struct sr_loop sr_loop;
typedef struct sr_task sr_task;
typedef struct sr_task_timer sr_task_timer;
typedef struct sr_dns_req sr_dns_req;
typedef struct sr_socket sr_socket;
typedef struct sr_linger sr_linger;
typedef struct sr_socket_extra sr_socket_extra;
typedef struct sr_out sr_out;

/* A growable array of sockets (the loop's lists of them). */
typedef struct {
  sr_socket **v;
  int n, cap;
} sr_sockets;

/*
** A task is a coroutine scheduled by sockrun. It waits on one thing at a
** time, so the timer that bounds a wait (timeouts, sleep) belongs to the
** task, not to the socket. The loop also has one pseudo-task (co == NULL)
** standing for code outside any task, which waits by driving the loop.
*/
typedef enum {
  SR_TASK_RUNNING,
  SR_TASK_WAITING,
  SR_TASK_DONE,
  SR_TASK_FAILED,
  SR_TASK_CANCELLED
} sr_task_state;

/* What a waiting task waits on (wait_on points to it). */
typedef enum {
  SR_WAIT_NONE,   /* nothing, or only its timer (sleep, a bare yield) */
  SR_WAIT_SOCKET, /* an sr_socket, as its reader or writer */
  SR_WAIT_DNS,    /* a name lookup (dns.c) */
  SR_WAIT_JOIN    /* another task's end */
} sr_wait_kind;

/* A task is allocated for each connection a server serves: its fields
** are ordered and sized so that it takes 56 bytes, and what few tasks
** need (the timer of a wait with a timeout, the lists of join) is in a
** block of its own, allocated on first use (task.c). */
struct sr_task {
  sr_loop *loop;
  lua_State *co; /* the coroutine; NULL for the loop-driving one */
  void *wait_on; /* what it waits on, as waits_on says */
  sr_task_timer *timer; /* that block, or NULL */
  /* A connection handler (sr.listen) owns its connection: it is closed
  ** when the task ends. conn points into the socket's userdata, which the
  ** task anchors (task.c). */
  sr_socket **conn;
  int ref;      /* registry ref anchoring the task while alive */
  int nres;     /* results (or error object) on co's stack */
  int16_t wake; /* why the last wait ended: 0 or a UV_E* code */
  unsigned char state;        /* an sr_task_state */
  unsigned char waits_on;     /* an sr_wait_kind */
  unsigned char woken;        /* pseudo-task: the wait has ended */
  unsigned char has_deadline; /* deadline bounds the operation */
  unsigned char deferred;     /* woken, to be resumed from its timer */
  /* (or from the ready queue, when that is due at once: task.c) */
};

struct sr_loop {
  uv_loop_t uv;
  lua_State *L;      /* main thread; NULL once the state is closing */
  sr_task *current;  /* the task running now, NULL outside tasks */
  sr_task main;      /* pseudo-task for blocking calls outside tasks */
  /* Tasks due to go on at the next turn of the loop (task.c): */
  sr_task_timer *ready, **ready_tail;
  unsigned ready_turn;
  uv_idle_t ready_idle; /* active while any is queued */
  sr_dns_req *answers; /* lookups ended, not yet taken by their task */
  sr_task *binary_main; /* the binary's main chunk (main.c), or NULL */
  sr_task *run_waiter;  /* that chunk, waiting in sr.run (loop.c) */
  int dry;              /* the last sr.run ended for want of work */
  int stop_with_main;   /* a stop ended its sr.run: stop when it ends */
  sr_sockets dirty;    /* sockets with gathered bytes (sr__loop_flush) */
  sr_sockets unpolled; /* closed ones that never had a handle, to free */
  sr_sockets retired;  /* closed ones whose handle is kept, to release */
  sr_socket **kept;    /* kept handles by descriptor number (socket.c) */
  int nkept, keptcap;
  uv_check_t reap;     /* which it does, after the poll, */
  uv_idle_t reap_idle; /* which this makes come (sr__socket_reap_soon) */
  sr_socket *lent;   /* the reader reading rbuf in place (stream.c) */
  char *spare[SR_GATHER_SPARES]; /* gather buffers kept for reuse */
  int nspare;
  int running;       /* > 0 while inside uv_run */
  int depth;         /* tasks being resumed, one inside the other */
  int cancelling;    /* cancels running, one inside the other */
  int stopped;       /* sr.stop() was called */
  int onerror_ref;   /* sr.onerror hook, or LUA_NOREF */
  void *signals[65]; /* sr.signal handlers by signal number */
  int nsockets;      /* socket structs not yet freed */
  int nflushing;     /* sockets closed with writes still going out */
  int ntasks;        /* tasks started and not finished */
  uint64_t futile;   /* loop time a collection freed no descriptor */
  char rbuf[SR_READ_CHUNK]; /* every stream read lands here first */
};

typedef enum { SR_TCP, SR_PIPE, SR_DGRAM, SR_TTY } sr_kind;

/*
** The socket. Its memory is malloc'd and freed only in the handle's close
** callback; the Lua userdata holds a pointer to it, set to NULL when the
** script closes the socket (so a closed socket answers EBADF) while libuv
** may still need the struct until the close callback. The handle comes
** last and the struct is allocated only as large as its kind's handle
** (sr_socket_size): sockets are their own descriptors, which sockrun reads
** and writes itself when a uv_poll_t says they are ready (stream.c,
** dgram.c), and only standard input (tty.c) is a libuv stream. An idle
** connection costs this struct, so the fields are sized to what they
** hold: libuv error codes fit 16 bits, buffer offsets 32 (a socket never
** holds 4 GiB unread); and what few sockets need (timeouts, a line bound,
** a bound path, a linger, writes waiting for the kernel) is in a block of
** its own, made on first use; the loop is the handle's. Then a TCP
** connection is 88 + 160 bytes, 256 with malloc's header.
*/
#define SR_NO_TIMEOUT UINT32_MAX /* in timeout_ms: none */
#define SR_BUF_MAX UINT32_MAX    /* bound on unread and gathered bytes */

struct sr_socket {
  sr_task *reader;       /* the task waiting to read/accept/recv */
  sr_task *writer;       /* the task waiting to write/connect/send */
  /* Unread bytes: buf[off .. off+len). NULL while nothing is unread. */
  char *buf;
  char *wbuf;            /* gathered bytes, not yet given to the kernel */
  sr_socket_extra *extra; /* or NULL: see sr_socket_extra */
  uint32_t off, len, cap;
  uint32_t scanned;      /* bytes from off known to hold no '\n' */
  uint32_t wlen, wcap;
  int fd;                 /* the descriptor, ours (stdin: libuv's) */
  int nwrites;            /* write requests waiting for the kernel */
  int16_t rerr;           /* sticky read error (UV_E*), reported after data */
  int16_t werr;           /* sticky write error from a queued write */
  int16_t cresult;        /* the result of a connect that is done */
  uint8_t kind;           /* an sr_kind */
  uint8_t family;         /* AF_INET, AF_INET6, AF_UNIX */
  uint8_t connect_status; /* 0 idle, 1 connecting, 2 done: see cresult */
  uint8_t poll_events;    /* the events uv_poll watches */
  unsigned closed : 1;    /* close() called: no more Lua operations */
  unsigned closing : 1;   /* uv_close() called */
  unsigned listening : 1;
  unsigned connected : 1;
  unsigned reading : 1;   /* reading in the background (or draining) */
  unsigned eof : 1;
  unsigned shut : 1;      /* shutdown() asked for */
  unsigned nbio_ref : 1;  /* handle currently uv_ref'd */
  unsigned borrowed : 1;  /* buf is the loop's read buffer, lent */
  unsigned dirty : 1;     /* on the loop's dirty list */
  unsigned flushing : 1;  /* closed, its queued writes still going out */
  unsigned fin_sent : 1;  /* the shutdown() (FIN) after the writes is done */
  unsigned abortive : 1;  /* linger 0: close resets, lingers for nothing */
  unsigned unread_only : 1; /* lingering for bytes unread alone (socket.c) */
  unsigned read_now : 1;  /* a read(2) will likely find bytes (stream.c) */
  unsigned read_ahead : 3; /* read_now reads since the reader last waited */
  unsigned polled : 1;    /* the handle is made (sr__socket_handle) */
  unsigned kept_ready : 1; /* closed, its handle kept for reuse (socket.c) */
  union {                 /* last: see above */
    uv_handle_t handle;
    uv_poll_t poll;       /* sockets */
    uv_stream_t stream;   /* standard input: */
    uv_pipe_t pipe;
    uv_tty_t tty;
  } h;
};

enum { SR_TCONNECT, SR_TREAD, SR_TWRITE };

/* The loop a socket is in: its handle's (uv comes first in sr_loop), set
** by sockrun itself while the handle is not made yet (socket.c). */
#define sr_socket_loop(s) ((sr_loop *)(s)->h.handle.loop)

/* A socket's rarely set state, allocated when first set (socket.c);
** without it, the defaults below hold. Freed with the socket. */
struct sr_socket_extra {
  char *path;            /* unix path we bound, unlinked at close */
  sr_linger *linger;     /* bounds the flush of a closed socket */
  uint32_t maxline;      /* SR_DEFAULT_MAXLINE */
  uint32_t timeout_ms[3]; /* connect, read, write; or SR_NO_TIMEOUT (all) */
  sr_out *out, **out_tail; /* writes waiting for the kernel (stream.c) */
  size_t out_bytes;        /* their bytes not sent yet */
};
sr_socket_extra *sr__socket_extra(sr_socket *s);
#define sr_socket_maxline(s) \
  ((s)->extra != NULL ? (s)->extra->maxline : SR_DEFAULT_MAXLINE)
#define sr_socket_linger(s) ((s)->extra != NULL ? (s)->extra->linger : NULL)

/* The timer of a closed socket's flush (socket.c): the handle first, so
** that sr__free_close_cb frees it all. */
struct sr_linger {
  uv_timer_t timer;
  uint64_t deadline; /* loop time (ms) the whole flush must end by */
  uint64_t drain_left; /* bytes from the peer it may still read and drop */
};

/* The loop comes to every C function as upvalue 1. Its memory is the
** loop userdata's, which Lua frees only after the last finalizer: one that
** runs after the loop's own (an object given __gc before the module was
** loaded) finds the loop torn down, and is told so. */
#define sr_getloop(L) sr__loop_alive((L), lua_touserdata((L), lua_upvalueindex(1)))
sr_loop *sr__loop_alive(lua_State *L, void *lp);

/* util.c */
int sr__fail(lua_State *L, int err);
int sr__fail_msg(lua_State *L, const char *msg, const char *code);
const char *sr__error_text(lua_State *L, int idx);
void sr__free_close_cb(uv_handle_t *h);
void sr__setfuncs(lua_State *L, const luaL_Reg *l, sr_loop *lp);
int sr__check_family(lua_State *L, int arg);
int sr__check_name(lua_State *L, int arg, const char *const names[],
                   const char *what);
int sr__check_port(lua_State *L, int arg);
int sr__parse_numeric(const char *host, size_t len, void *addr,
                      uint32_t *scope);
socklen_t sr__check_inaddr(lua_State *L, int harg, int parg, int family,
                           struct sockaddr_storage *ss);
socklen_t sr__check_unaddr(lua_State *L, int arg, struct sockaddr_storage *ss);
int sr__push_addr(lua_State *L, const struct sockaddr *sa, socklen_t len);
const char *sr__family_name(int family);
double sr__opt_seconds(lua_State *L, int arg);

/* loop.c */
int sr__run(sr_loop *lp, lua_State *L, uv_run_mode mode);
void sr__loop_flush(sr_loop *lp);
int sr__in_finalizer(lua_State *L);
__attribute__((visibility("default"))) int luaopen_sockrun_core(lua_State *L);

/* task.c */
sr_task *sr__self(lua_State *L, sr_loop *lp);
int sr__wait(lua_State *L, sr_task *t, double timeout, int fresh,
             lua_KContext ctx, lua_KFunction k);
void sr__wake(sr_task *t, int status);
void sr__wake_later(sr_task *t, int status);
int sr__timedout(sr_loop *lp);
void sr__task_open(lua_State *L, sr_loop *lp);
void sr__task_loop_init(sr_loop *lp);
int sr__spawn(lua_State *L);

/* socket.c */
sr_socket *sr__check_socket(lua_State *L, int arg);
sr_socket *sr__to_socket(lua_State *L, int arg);
sr_socket **sr__socket_slot(lua_State *L, int arg);
void sr__socket_close_slot(sr_socket **slot);
sr_socket *sr__new_socket(lua_State *L, sr_loop *lp, sr_kind kind, int family);
void sr__socket_close(sr_socket *s);
int sr__socket_wait(lua_State *L, sr_socket *s, sr_task **slot, int which,
                    int fresh, lua_KContext ctx, lua_KFunction k);
void sr__socket_wake(sr_task **slot, int status);
void sr__socket_detach(sr_task *t);
void sr__socket_update_ref(sr_socket *s);
void sr__socket_open(lua_State *L, sr_loop *lp);
void sr__socket_finish_close(sr_socket *s);
void sr__socket_linger_quiet(sr_socket *s);
void sr__socket_linger_stop(sr_socket *s);
void sr__socket_close_cb(uv_handle_t *h);
int sr__sockets_add(sr_sockets *l, sr_socket *s);
void sr__sockets_remove(sr_sockets *l, sr_socket *s);
int sr__socket_handle(sr_socket *s);
int sr__socket_poll(sr_socket *s, int want, uv_poll_cb cb);
void sr__socket_reap(sr_loop *lp);
void sr__socket_drop_kept(sr_loop *lp);
void sr__socket_loop_init(sr_loop *lp);

/* stream.c; the buffer and framing functions are also what the fuzz
** target (spec/fuzz/framing.c) drives */
typedef enum {
  SR_READ_ANY,
  SR_READ_LINE,
  SR_READ_ALL,
  SR_READ_COUNT,
  SR_READ_NUMBER
} sr_fmt;
#define SR_NUMERAL_MAX 200 /* longest "n" numeral, as liolib's */
int sr__stream_append(sr_socket *s, const char *p, size_t n);
/* sr__stream_try_read runs in a C function with the upvalues of s:read:
** the loop, then what sr__stream_push_read_upvalues pushes */
int sr__stream_push_read_upvalues(lua_State *L);
int sr__stream_try_read(lua_State *L, sr_socket *s, sr_fmt fmt, size_t count,
                        int keep);
void sr__stream_start(sr_socket *s);
int sr__stream_watch(sr_socket *s);
void sr__stream_free_queue(sr_socket *s);
void sr__stream_reclaim(sr_loop *lp);
void sr__stream_release(sr_socket *s);
int sr__stream_unread(sr_socket *s);
void sr__stream_linger(sr_socket *s);
int sr__stream_read(lua_State *L, sr_socket *s);
int sr__stream_write(lua_State *L, sr_socket *s, size_t total);
int sr__stream_flush(sr_socket *s);
int sr__stream_shutdown(lua_State *L);

/* dgram.c */
int sr__dgram_init(sr_socket *s, int family);
int sr__dgram_sendto(lua_State *L);
int sr__dgram_recvfrom(lua_State *L);
int sr__dgram_read(lua_State *L);
int sr__dgram_write(lua_State *L);

/* alloc.c: the binary's allocator for its Lua state (not in the module) */
typedef struct sr_pool sr_pool;
sr_pool *sr__pool_new(void);
void sr__pool_free(sr_pool *p);
void *sr__alloc(void *ud, void *ptr, size_t osize, size_t nsize);

/* dns.c, signal.c */
void sr__dns_open(lua_State *L, sr_loop *lp);
void sr__dns_detach(sr_task *t);
void sr__dns_free_answers(sr_loop *lp);
/* tty.c */
void sr__tty_open(lua_State *L, sr_loop *lp);
int sr__tty_init(sr_socket *s, int *inited);
void sr__tty_release(sr_socket *s);
void sr__tty_forget(sr_loop *lp);
void sr__signal_open(lua_State *L, sr_loop *lp);

#endif
