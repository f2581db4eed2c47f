/* A stand-in for libnccl.so.2 with nccl.h's signatures, for nccl_test.go: it checks that the Go
 * side passes every argument where the C ABI expects it (the 128-byte unique id by value among
 * them). "Device" pointers are host pointers here and the world has one rank, so each
 * collective is a copy. Each call records its arguments for fake_last(). */
#include <stddef.h>
#include <string.h>

typedef struct { char internal[128]; } ncclUniqueId;
typedef struct fakeComm *ncclComm_t;
typedef void *cudaStream_t;

static long last[8];
static struct fakeComm { int nranks, rank; unsigned long idsum; } the_comm;

static size_t elsize(int t) { return t == 7 ? 4 : t == 9 ? 2 : 0; }
static void rec(long a, long b, long c, long d, long e, long f) { last[0]=a; last[1]=b; last[2]=c; last[3]=d; last[4]=e; last[5]=f; }

int fake_last(long *out) { memcpy(out, last, sizeof last); return 0; }

int ncclGetVersion(int *v) { *v = 22304; return 0; }
const char *ncclGetErrorString(int r) { return r == 5 ? "invalid usage" : "fake error"; }
int ncclGetUniqueId(ncclUniqueId *id) { for (int i = 0; i < 128; i++) id->internal[i] = (char)(i * 3 + 1); return 0; }

int ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
	unsigned long s = 0;
	for (int i = 0; i < 128; i++) s = s * 31 + (unsigned char)id.internal[i];
	the_comm.nranks = nranks; the_comm.rank = rank; the_comm.idsum = s;
	*comm = &the_comm;
	rec(1, nranks, rank, (long)s, (unsigned char)id.internal[0], (unsigned char)id.internal[127]);
	return rank >= 0 && rank < nranks ? 0 : 5;
}

int ncclAllReduce(const void *s, void *r, size_t n, int t, int op, ncclComm_t c, cudaStream_t st) {
	rec(2, (long)n, t, op, c == &the_comm, (long)st);
	memmove(r, s, n * elsize(t));
	return 0;
}
int ncclReduceScatter(const void *s, void *r, size_t n, int t, int op, ncclComm_t c, cudaStream_t st) {
	rec(3, (long)n, t, op, c == &the_comm, (long)st);
	memmove(r, s, n * elsize(t));
	return 0;
}
int ncclAllGather(const void *s, void *r, size_t n, int t, ncclComm_t c, cudaStream_t st) {
	rec(4, (long)n, t, -1, c == &the_comm, (long)st);
	memmove(r, s, n * elsize(t));
	return 0;
}
int ncclBroadcast(const void *s, void *r, size_t n, int t, int root, ncclComm_t c, cudaStream_t st) {
	rec(5, (long)n, t, root, c == &the_comm, (long)st);
	memmove(r, s, n * elsize(t));
	return 0;
}
int ncclCommAbort(ncclComm_t c) { rec(6, c == &the_comm, 0, 0, 0, 0); return 0; }
int ncclCommDestroy(ncclComm_t c) { rec(7, c == &the_comm, 0, 0, 0, 0); return 0; }
