/*
** alloc.c -- libFuzzer target for the binary's Lua allocator
** (src/alloc.c). The input is a script of allocations, resizes and frees,
** used as Lua uses the allocator (every free and resize gives the block's
** size); every block keeps its bytes across resizes, within and across
** the pool's 1 KiB bound, and no two live blocks overlap.
*/

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../src/internal.h"

#define CHECK(c)       \
  do {                 \
    if (!(c)) abort(); \
  } while (0)

#define SLOTS 64

static struct {
  unsigned char *p;
  size_t n;
  unsigned char fill; /* every byte of the block */
} slot[SLOTS];

static void check_bytes(int i, size_t n) {
  size_t k;
  for (k = 0; k < n; k++) CHECK(slot[i].p[k] == slot[i].fill);
}

/* No live block overlaps another (the pool hands out each byte once). */
static void check_disjoint(int i) {
  int j;
  for (j = 0; j < SLOTS; j++) {
    if (j == i || slot[j].p == NULL) continue;
    CHECK(slot[i].p + slot[i].n <= slot[j].p ||
          slot[j].p + slot[j].n <= slot[i].p);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  sr_pool *pool = sr__pool_new();
  size_t i = 0;
  int s;
  CHECK(pool != NULL);
  memset(slot, 0, sizeof slot);
  while (i + 2 < size) {
    int k = data[i] % SLOTS, op = data[i] / SLOTS; /* op: 0..3 */
    /* sizes 1..4096, most of them small, some across SR_POOL_MAX */
    size_t n = 1 + (((size_t)data[i + 1] << 8 | data[i + 2]) %
                    (op == 3 ? 4096 : 1100));
    i += 3;
    if (slot[k].p == NULL) { /* allocate, with a Lua type as osize */
      slot[k].p = sr__alloc(pool, NULL, (size_t)(op + 1), n);
      CHECK(slot[k].p != NULL);
      slot[k].n = n;
      slot[k].fill = (unsigned char)(k * 7 + n);
      memset(slot[k].p, slot[k].fill, n);
      check_disjoint(k);
    } else if (op == 0) { /* free */
      check_bytes(k, slot[k].n);
      CHECK(sr__alloc(pool, slot[k].p, slot[k].n, 0) == NULL);
      slot[k].p = NULL;
    } else { /* resize: the common prefix is kept */
      unsigned char *p = sr__alloc(pool, slot[k].p, slot[k].n, n);
      CHECK(p != NULL);
      slot[k].p = p;
      check_bytes(k, slot[k].n < n ? slot[k].n : n);
      if (n > slot[k].n) memset(p + slot[k].n, slot[k].fill, n - slot[k].n);
      slot[k].n = n;
      check_disjoint(k);
    }
  }
  for (s = 0; s < SLOTS; s++)
    if (slot[s].p != NULL) sr__alloc(pool, slot[s].p, slot[s].n, 0);
  sr__pool_free(pool);
  return 0;
}
