// Candidate CPU kernels for the convolution layers, timed on
// the shapes of Flax's MNIST CNN (NHWC, float32, batch 128).
//
// One process runs one candidate at one thread count; bench/conv_kernels.sh
// alternates candidates and rounds and takes the medians. Every op's output
// is kept from its first run and compared bit for bit with its last run
// (same inputs, same thread count), hashed so that runs in different
// processes can be compared too, and, with --check, compared with a plain
// float64 loop.
//
// Layouts, shared by every candidate and the reference: activations NHWC,
// convolution weights HWIO (3, 3, C_in, C_out), dense weights (in, out)
// row-major, as Flax stores them.
//
// Candidates:
//   dnnl-any    oneDNN primitives with format_tag any; reorders from and to
//               the NHWC/HWIO user buffers are done inside each timed op.
//   dnnl-nhwc   oneDNN primitives on the user layouts directly (no reorder).
//   im2col-openblas  im2col/col2im loops plus OpenBLAS cblas_sgemm.
//   im2col-blis      the same loops plus BLIS bli_sgemm.
//   xsmm        libxsmm 1.17's DNN convolution API (NHWC/RSCK buffers).
// Dense layers: dnnl-* use the oneDNN matmul primitive, im2col-openblas
// OpenBLAS, im2col-blis BLIS, xsmm none.

#define _GNU_SOURCE
#include <dlfcn.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <blis.h>
#include <dnnl.h>
#include <libxsmm.h>

// OpenBLAS's own entry points; its cblas_sgemm has the prototype that
// blis.h already declares, and the link order makes the call resolve to
// OpenBLAS (checked at run time with dladdr, printed as "symbol").
int openblas_set_num_threads(int n);
char *openblas_get_config(void);
int openblas_get_num_threads(void);

#define NB 128

// Op ids. The bias gradient is part of each bwd_w op.
enum {
    OP_C1_FWD,
    OP_C1_BWW,
    OP_C2_FWD,
    OP_C2_BWD,
    OP_C2_BWW,
    OP_D1_FWD,
    OP_D1_BWD,
    OP_D1_BWW,
    OP_D2_FWD,
    OP_D2_BWD,
    OP_D2_BWW,
    OP_COUNT
};
static const char *op_names[OP_COUNT] = {
    "conv1.fwd",  "conv1.bwd_w",  "conv2.fwd",   "conv2.bwd_d",
    "conv2.bwd_w", "dense1.fwd",  "dense1.bwd_d", "dense1.bwd_w",
    "dense2.fwd", "dense2.bwd_d", "dense2.bwd_w",
};

// One 3x3 SAME stride-1 convolution layer: shapes and the buffers of one
// replica (all owned by the bench_state block).
typedef struct {
    int h, w, c, o;          // spatial size, input and output channels
    float *x, *wt, *b;       // (NB,h,w,c), (3,3,c,o), (o)
    float *y, *dy;           // (NB,h,w,o)
    float *dx;               // (NB,h,w,c), NULL when not computed
    float *dw, *db;          // (3,3,c,o), (o)
} conv_layer;

// One dense layer y = x W + b: (NB,in) x (in,out).
typedef struct {
    int in, out;
    float *x, *wt, *b, *y, *dy, *dx, *dw, *db;
} dense_layer;

typedef struct {
    conv_layer c1, c2;
    dense_layer d1, d2;
} net;

// ---------------------------------------------------------------- helpers

static double now_sec(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "conv_kernels: %s\n", what);
    exit(2);
}

static float *falloc(size_t n)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, n * sizeof(float) + 64) != 0)
        die("out of memory");
    memset(p, 0, n * sizeof(float));
    return p;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float urand(void) // uniform in [-1, 1), splitmix64
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)((double)(z >> 40) / (double)(1ull << 23) - 1.0);
}
static void fill(float *p, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        p[i] = scale * urand();
}

static uint64_t fnv(const float *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n * sizeof(float); i++)
        h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static size_t conv_act(const conv_layer *l, int ch) { return (size_t)NB * l->h * l->w * ch; }
static size_t conv_wsz(const conv_layer *l) { return (size_t)9 * l->c * l->o; }

// Allocates one replica's buffers and fills the inputs from the fixed seed,
// so that every candidate and every process sees the same numbers.
static void net_init(net *n)
{
    rng_state = 0x9e3779b97f4a7c15ull;
    conv_layer *ls[2] = { &n->c1, &n->c2 };
    n->c1 = (conv_layer){ .h = 28, .w = 28, .c = 1, .o = 32 };
    n->c2 = (conv_layer){ .h = 14, .w = 14, .c = 32, .o = 64 };
    for (int i = 0; i < 2; i++) {
        conv_layer *l = ls[i];
        l->x = falloc(conv_act(l, l->c));
        l->wt = falloc(conv_wsz(l));
        l->b = falloc(l->o);
        l->y = falloc(conv_act(l, l->o));
        l->dy = falloc(conv_act(l, l->o));
        l->dx = i == 0 ? NULL : falloc(conv_act(l, l->c));
        l->dw = falloc(conv_wsz(l));
        l->db = falloc(l->o);
        fill(l->x, conv_act(l, l->c), 1.0f);
        fill(l->wt, conv_wsz(l), 1.0f / sqrtf(9.0f * l->c));
        fill(l->b, l->o, 0.1f);
        fill(l->dy, conv_act(l, l->o), 1e-3f);
    }
    dense_layer *ds[2] = { &n->d1, &n->d2 };
    n->d1 = (dense_layer){ .in = 3136, .out = 256 };
    n->d2 = (dense_layer){ .in = 256, .out = 10 };
    for (int i = 0; i < 2; i++) {
        dense_layer *d = ds[i];
        size_t xi = (size_t)NB * d->in, yo = (size_t)NB * d->out, wo = (size_t)d->in * d->out;
        d->x = falloc(xi);
        d->wt = falloc(wo);
        d->b = falloc(d->out);
        d->y = falloc(yo);
        d->dy = falloc(yo);
        d->dx = falloc(xi);
        d->dw = falloc(wo);
        d->db = falloc(d->out);
        fill(d->x, xi, 1.0f);
        fill(d->wt, wo, 1.0f / sqrtf((float)d->in));
        fill(d->b, d->out, 0.1f);
        fill(d->dy, yo, 1e-3f);
    }
}

// Multiply-add FLOPs of an op (2 per MAC; bias terms left out).
static double op_flops(const net *n, int op)
{
    const conv_layer *c = op <= OP_C1_BWW ? &n->c1 : &n->c2;
    const dense_layer *d = op <= OP_D1_BWW ? &n->d1 : &n->d2;
    if (op <= OP_C2_BWW)
        return 2.0 * NB * c->h * c->w * 9.0 * c->c * c->o; // SAME: every output uses 9 taps (edges counted)
    return 2.0 * NB * d->in * d->out;
}

// The output buffers an op writes, for hashing and comparing.
typedef struct {
    float *p[2];
    size_t n[2];
    int count;
} op_outputs;

static op_outputs outputs_of(net *n, int op)
{
    op_outputs o = { { NULL, NULL }, { 0, 0 }, 1 };
    conv_layer *c = op <= OP_C1_BWW ? &n->c1 : &n->c2;
    dense_layer *d = op <= OP_D1_BWW ? &n->d1 : &n->d2;
    switch (op) {
    case OP_C1_FWD: case OP_C2_FWD:
        o.p[0] = c->y; o.n[0] = conv_act(c, c->o); break;
    case OP_C2_BWD:
        o.p[0] = c->dx; o.n[0] = conv_act(c, c->c); break;
    case OP_C1_BWW: case OP_C2_BWW:
        o.p[0] = c->dw; o.n[0] = conv_wsz(c);
        o.p[1] = c->db; o.n[1] = (size_t)c->o; o.count = 2; break;
    case OP_D1_FWD: case OP_D2_FWD:
        o.p[0] = d->y; o.n[0] = (size_t)NB * d->out; break;
    case OP_D1_BWD: case OP_D2_BWD:
        o.p[0] = d->dx; o.n[0] = (size_t)NB * d->in; break;
    default:
        o.p[0] = d->dw; o.n[0] = (size_t)d->in * d->out;
        o.p[1] = d->db; o.n[1] = (size_t)d->out; o.count = 2; break;
    }
    return o;
}

// Column sums of dy (rows, cols) into db, in a fixed order.
static void bias_grad(const float *dy, size_t rows, int cols, float *db)
{
    memset(db, 0, sizeof(float) * (size_t)cols);
    for (size_t r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++)
            db[j] += dy[r * (size_t)cols + (size_t)j];
}

// ---------------------------------------------------------- float64 reference

// Reference values of one op, as doubles, for the same outputs as outputs_of.
static void reference(net *n, int op, double *r0, double *r1)
{
    if (op <= OP_C2_BWW) {
        conv_layer *l = op <= OP_C1_BWW ? &n->c1 : &n->c2;
        int H = l->h, W = l->w, C = l->c, O = l->o;
        int kind = (op == OP_C1_FWD || op == OP_C2_FWD) ? 0 : op == OP_C2_BWD ? 1 : 2;
        size_t nout = kind == 0 ? conv_act(l, O) : kind == 1 ? conv_act(l, C) : conv_wsz(l);
        memset(r0, 0, nout * sizeof(double));
        if (kind == 2)
            memset(r1, 0, (size_t)O * sizeof(double));
        for (int b = 0; b < NB; b++)
            for (int h = 0; h < H; h++)
                for (int w = 0; w < W; w++) {
                    size_t yi = (((size_t)b * H + h) * W + w) * O;
                    if (kind == 0)
                        for (int o = 0; o < O; o++)
                            r0[yi + o] += l->b[o];
                    if (kind == 2)
                        for (int o = 0; o < O; o++)
                            r1[o] += l->dy[yi + o];
                    for (int kh = 0; kh < 3; kh++)
                        for (int kw = 0; kw < 3; kw++) {
                            int ih = h + kh - 1, iw = w + kw - 1;
                            if (ih < 0 || ih >= H || iw < 0 || iw >= W)
                                continue;
                            size_t xi = (((size_t)b * H + ih) * W + iw) * C;
                            for (int c = 0; c < C; c++) {
                                const float *wr = l->wt + ((size_t)(kh * 3 + kw) * C + c) * O;
                                if (kind == 0) {
                                    double xv = l->x[xi + c];
                                    for (int o = 0; o < O; o++)
                                        r0[yi + o] += xv * wr[o];
                                } else if (kind == 1) {
                                    double s = 0;
                                    for (int o = 0; o < O; o++)
                                        s += (double)l->dy[yi + o] * wr[o];
                                    r0[xi + c] += s;
                                } else {
                                    double xv = l->x[xi + c];
                                    double *dr = r0 + ((size_t)(kh * 3 + kw) * C + c) * O;
                                    for (int o = 0; o < O; o++)
                                        dr[o] += xv * l->dy[yi + o];
                                }
                            }
                        }
                }
        return;
    }
    dense_layer *d = op <= OP_D1_BWW ? &n->d1 : &n->d2;
    int I = d->in, O = d->out;
    int kind = (op == OP_D1_FWD || op == OP_D2_FWD) ? 0 : (op == OP_D1_BWD || op == OP_D2_BWD) ? 1 : 2;
    if (kind == 0) {
        for (int b = 0; b < NB; b++)
            for (int o = 0; o < O; o++) {
                double s = d->b[o];
                for (int i = 0; i < I; i++)
                    s += (double)d->x[(size_t)b * I + i] * d->wt[(size_t)i * O + o];
                r0[(size_t)b * O + o] = s;
            }
    } else if (kind == 1) {
        for (int b = 0; b < NB; b++)
            for (int i = 0; i < I; i++) {
                double s = 0;
                for (int o = 0; o < O; o++)
                    s += (double)d->dy[(size_t)b * O + o] * d->wt[(size_t)i * O + o];
                r0[(size_t)b * I + i] = s;
            }
    } else {
        for (int i = 0; i < I; i++)
            for (int o = 0; o < O; o++) {
                double s = 0;
                for (int b = 0; b < NB; b++)
                    s += (double)d->x[(size_t)b * I + i] * d->dy[(size_t)b * O + o];
                r0[(size_t)i * O + o] = s;
            }
        for (int o = 0; o < O; o++) {
            double s = 0;
            for (int b = 0; b < NB; b++)
                s += d->dy[(size_t)b * O + o];
            r1[o] = s;
        }
    }
}

// max |out - ref| / max |ref| over each output tensor (err[1]: the bias
// gradient of a bwd_w op, else -1).
static void rel_error(const op_outputs *o, double *const ref[2], double err[2])
{
    err[1] = -1;
    for (int k = 0; k < o->count; k++) {
        double emax = 0, rmax = 0;
        for (size_t i = 0; i < o->n[k]; i++) {
            double e = fabs((double)o->p[k][i] - ref[k][i]);
            if (e > emax)
                emax = e;
            if (fabs(ref[k][i]) > rmax)
                rmax = fabs(ref[k][i]);
        }
        err[k] = rmax > 0 ? emax / rmax : emax;
    }
}

// -------------------------------------------------------- im2col + sgemm

typedef enum { GEMM_OPENBLAS, GEMM_BLIS } gemm_lib;

// Row-major C (m,n) = op(A) op(B) + beta C with alpha 1.
static void gemm_rm(gemm_lib lib, int ta, int tb, int m, int n, int k, const float *a, int lda,
                    const float *b, int ldb, float beta, float *c, int ldc)
{
    if (lib == GEMM_OPENBLAS) {
        cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans,
                    m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    float one = 1.0f, bt = beta;
    // BLIS takes explicit row and column strides, so row-major needs no flip.
    bli_sgemm(ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, m, n, k,
              &one, (float *)a, lda, 1, (float *)b, ldb, 1, &bt, c, ldc, 1);
}

// col (nimg*H*W, 9*C) from x (nimg,H,W,C), zero where the window leaves the
// image; column index (kh*3+kw)*C + c matches the HWIO weight rows.
static void im2col(const float *x, int nimg, int H, int W, int C, float *col)
{
    size_t K = (size_t)9 * C;
    for (int b = 0; b < nimg; b++)
        for (int h = 0; h < H; h++)
            for (int w = 0; w < W; w++) {
                float *row = col + (((size_t)b * H + h) * W + w) * K;
                for (int kh = 0; kh < 3; kh++)
                    for (int kw = 0; kw < 3; kw++) {
                        float *dst = row + (size_t)(kh * 3 + kw) * C;
                        int ih = h + kh - 1, iw = w + kw - 1;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W)
                            memset(dst, 0, sizeof(float) * (size_t)C);
                        else
                            memcpy(dst, x + (((size_t)b * H + ih) * W + iw) * C, sizeof(float) * (size_t)C);
                    }
            }
}

// dx (nimg,H,W,C) = scatter-add of col (nimg*H*W, 9*C), in a fixed order.
static void col2im(const float *col, int nimg, int H, int W, int C, float *dx)
{
    size_t K = (size_t)9 * C;
    memset(dx, 0, sizeof(float) * (size_t)nimg * H * W * C);
    for (int b = 0; b < nimg; b++)
        for (int h = 0; h < H; h++)
            for (int w = 0; w < W; w++) {
                const float *row = col + (((size_t)b * H + h) * W + w) * K;
                for (int kh = 0; kh < 3; kh++)
                    for (int kw = 0; kw < 3; kw++) {
                        int ih = h + kh - 1, iw = w + kw - 1;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W)
                            continue;
                        const float *src = row + (size_t)(kh * 3 + kw) * C;
                        float *d = dx + (((size_t)b * H + ih) * W + iw) * C;
                        for (int c = 0; c < C; c++)
                            d[c] += src[c];
                    }
            }
}

// The im2col candidates process the batch in chunks of `chunk` images so
// that the column matrix stays in the caches; col holds one chunk.
typedef struct {
    gemm_lib lib;
    int chunk;
    float *col; // (chunk*28*28, 9*32) floats at most, owned here
} im2col_ctx;

static void i2c_conv(im2col_ctx *ctx, conv_layer *l, int kind)
{
    int H = l->h, W = l->w, C = l->c, O = l->o, K = 9 * C;
    size_t img_in = (size_t)H * W * C, img_out = (size_t)H * W * O;
    for (int b0 = 0; b0 < NB; b0 += ctx->chunk) {
        int nimg = NB - b0 < ctx->chunk ? NB - b0 : ctx->chunk;
        int m = nimg * H * W;
        const float *x = l->x + b0 * img_in;
        const float *dy = l->dy + b0 * img_out;
        if (kind == 0) { // y = col W + b
            float *y = l->y + b0 * img_out;
            for (int r = 0; r < m; r++)
                memcpy(y + (size_t)r * O, l->b, sizeof(float) * (size_t)O);
            im2col(x, nimg, H, W, C, ctx->col);
            gemm_rm(ctx->lib, 0, 0, m, O, K, ctx->col, K, l->wt, O, 1.0f, y, O);
        } else if (kind == 1) { // dcol = dy W^T, then col2im
            gemm_rm(ctx->lib, 0, 1, m, K, O, dy, O, l->wt, O, 0.0f, ctx->col, K);
            col2im(ctx->col, nimg, H, W, C, l->dx + b0 * img_in);
        } else { // dW += col^T dy
            im2col(x, nimg, H, W, C, ctx->col);
            gemm_rm(ctx->lib, 1, 0, K, O, m, ctx->col, K, dy, O, b0 == 0 ? 0.0f : 1.0f, l->dw, O);
        }
    }
    if (kind == 2)
        bias_grad(l->dy, (size_t)NB * H * W, O, l->db);
}

static void i2c_dense(im2col_ctx *ctx, dense_layer *d, int kind)
{
    int I = d->in, O = d->out;
    if (kind == 0) {
        for (int r = 0; r < NB; r++)
            memcpy(d->y + (size_t)r * O, d->b, sizeof(float) * (size_t)O);
        gemm_rm(ctx->lib, 0, 0, NB, O, I, d->x, I, d->wt, O, 1.0f, d->y, O);
    } else if (kind == 1) {
        gemm_rm(ctx->lib, 0, 1, NB, I, O, d->dy, O, d->wt, O, 0.0f, d->dx, I);
    } else {
        gemm_rm(ctx->lib, 1, 0, I, O, NB, d->x, I, d->dy, O, 0.0f, d->dw, O);
        bias_grad(d->dy, NB, O, d->db);
    }
}

// ------------------------------------------------------------------ oneDNN

#define DN(call)                                                                  \
    do {                                                                          \
        dnnl_status_t st_ = (call);                                               \
        if (st_ != dnnl_success) {                                                \
            fprintf(stderr, "conv_kernels: %s failed: status %d\n", #call, (int)st_); \
            exit(2);                                                              \
        }                                                                         \
    } while (0)

// One argument of a oneDNN op: the user's buffer in its own layout and,
// when the primitive wants another layout, an internal memory and the
// reorder between them (run inside the timed op).
typedef struct {
    int arg;
    int is_out;
    dnnl_memory_t user, prim;      // prim == user when no reorder is needed
    dnnl_primitive_t reorder;      // NULL when no reorder is needed
    dnnl_memory_t rscratch;
} dn_arg;

// One oneDNN op: its primitive, arguments, and a user-mode scratchpad (so
// that concurrent replicas never share one).
typedef struct {
    dnnl_primitive_t prim;
    dn_arg a[6];
    int na;
    dnnl_memory_t scratch;
    char impl[128];
    double reorder_sec; // time in this op's reorders at its last run
} dn_op;

typedef struct {
    dnnl_engine_t eng;
    dnnl_stream_t strm;
    dnnl_primitive_attr_t attr;
    int any; // 1: format_tag any plus reorders; 0: user layouts directly
    dn_op ops[OP_COUNT];
} dnnl_ctx;

static dnnl_memory_t dn_scratch(dnnl_ctx *ctx, const_dnnl_primitive_desc_t pd)
{
    const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (md == NULL || dnnl_memory_desc_get_size(md) == 0)
        return NULL;
    dnnl_memory_t m;
    DN(dnnl_memory_create(&m, md, ctx->eng, DNNL_MEMORY_ALLOCATE));
    return m;
}

static void dn_add_arg(dnnl_ctx *ctx, dn_op *op, const_dnnl_primitive_desc_t pd, int arg,
                       const dnnl_memory_desc_t *user_md, float *buf, int is_out)
{
    dn_arg *a = &op->a[op->na++];
    a->arg = arg;
    a->is_out = is_out;
    a->reorder = NULL;
    a->rscratch = NULL;
    DN(dnnl_memory_create(&a->user, user_md, ctx->eng, buf));
    const dnnl_memory_desc_t *pmd = dnnl_primitive_desc_query_md(pd, dnnl_query_exec_arg_md, arg);
    if (dnnl_memory_desc_equal(pmd, user_md)) {
        a->prim = a->user;
        return;
    }
    DN(dnnl_memory_create(&a->prim, pmd, ctx->eng, DNNL_MEMORY_ALLOCATE));
    dnnl_primitive_desc_t rpd;
    if (is_out)
        DN(dnnl_reorder_primitive_desc_create(&rpd, pmd, ctx->eng, user_md, ctx->eng, ctx->attr));
    else
        DN(dnnl_reorder_primitive_desc_create(&rpd, user_md, ctx->eng, pmd, ctx->eng, ctx->attr));
    DN(dnnl_primitive_create(&a->reorder, rpd));
    a->rscratch = dn_scratch(ctx, rpd);
    DN(dnnl_primitive_desc_destroy(rpd));
}

static void dn_finish(dnnl_ctx *ctx, dn_op *op, dnnl_primitive_desc_t pd)
{
    const char *impl = NULL;
    DN(dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl));
    snprintf(op->impl, sizeof op->impl, "%s", impl ? impl : "?");
    int reorders = 0;
    for (int i = 0; i < op->na; i++)
        reorders += op->a[i].reorder != NULL;
    if (reorders) {
        size_t len = strlen(op->impl);
        snprintf(op->impl + len, sizeof op->impl - len, "+%d reorders", reorders);
    }
    DN(dnnl_primitive_create(&op->prim, pd));
    op->scratch = dn_scratch(ctx, pd);
    DN(dnnl_primitive_desc_destroy(pd));
}

static void dn_run_reorder(dnnl_ctx *ctx, dn_arg *a)
{
    dnnl_exec_arg_t args[3] = {
        { DNNL_ARG_FROM, a->is_out ? a->prim : a->user },
        { DNNL_ARG_TO, a->is_out ? a->user : a->prim },
        { DNNL_ARG_SCRATCHPAD, a->rscratch },
    };
    DN(dnnl_primitive_execute(a->reorder, ctx->strm, a->rscratch ? 3 : 2, args));
}

static void dn_exec(dnnl_ctx *ctx, dn_op *op)
{
    dnnl_exec_arg_t args[8];
    int n = 0;
    double t0 = now_sec();
    for (int i = 0; i < op->na; i++) {
        dn_arg *a = &op->a[i];
        if (a->reorder && !a->is_out)
            dn_run_reorder(ctx, a);
        args[n++] = (dnnl_exec_arg_t){ a->arg, a->prim };
    }
    DN(dnnl_stream_wait(ctx->strm));
    double t1 = now_sec();
    if (op->scratch)
        args[n++] = (dnnl_exec_arg_t){ DNNL_ARG_SCRATCHPAD, op->scratch };
    DN(dnnl_primitive_execute(op->prim, ctx->strm, n, args));
    DN(dnnl_stream_wait(ctx->strm));
    double t2 = now_sec();
    for (int i = 0; i < op->na; i++)
        if (op->a[i].reorder && op->a[i].is_out)
            dn_run_reorder(ctx, &op->a[i]);
    DN(dnnl_stream_wait(ctx->strm));
    op->reorder_sec = (t1 - t0) + (now_sec() - t2);
}

static void dn_md(dnnl_memory_desc_t *md, int nd, const dnnl_dims_t dims, dnnl_format_tag_t tag)
{
    DN(dnnl_memory_desc_init_by_tag(md, nd, dims, dnnl_f32, tag));
}

static void dn_conv_init(dnnl_ctx *ctx, conv_layer *l, int op_fwd, int op_bwd, int op_bww)
{
    dnnl_dims_t xd = { NB, l->c, l->h, l->w }, yd = { NB, l->o, l->h, l->w };
    dnnl_dims_t wd = { l->o, l->c, 3, 3 }, bd = { l->o };
    dnnl_dims_t strides = { 1, 1 }, pad = { 1, 1 };
    dnnl_memory_desc_t ux, uy, uw, ub, px, py, pw, pb;
    dn_md(&ux, 4, xd, dnnl_nhwc);
    dn_md(&uy, 4, yd, dnnl_nhwc);
    dn_md(&uw, 4, wd, dnnl_hwio);
    dn_md(&ub, 1, bd, dnnl_a);
    if (ctx->any) {
        dn_md(&px, 4, xd, dnnl_format_tag_any);
        dn_md(&py, 4, yd, dnnl_format_tag_any);
        dn_md(&pw, 4, wd, dnnl_format_tag_any);
        dn_md(&pb, 1, bd, dnnl_format_tag_any);
    } else {
        px = ux; py = uy; pw = uw; pb = ub;
    }
    dnnl_convolution_desc_t fd, bdd, bwd;
    dnnl_primitive_desc_t fpd, pd;
    DN(dnnl_convolution_forward_desc_init(&fd, dnnl_forward_training, dnnl_convolution_direct, &px, &pw,
                                          &pb, &py, strides, pad, pad));
    DN(dnnl_primitive_desc_create(&fpd, &fd, ctx->attr, ctx->eng, NULL));

    DN(dnnl_primitive_desc_clone(&pd, fpd));
    dn_op *op = &ctx->ops[op_fwd];
    dn_add_arg(ctx, op, pd, DNNL_ARG_SRC, &ux, l->x, 0);
    dn_add_arg(ctx, op, pd, DNNL_ARG_WEIGHTS, &uw, l->wt, 0);
    dn_add_arg(ctx, op, pd, DNNL_ARG_BIAS, &ub, l->b, 0);
    dn_add_arg(ctx, op, pd, DNNL_ARG_DST, &uy, l->y, 1);
    dn_finish(ctx, op, pd);

    if (op_bwd >= 0) {
        DN(dnnl_convolution_backward_data_desc_init(&bdd, dnnl_convolution_direct, &px, &pw, &py, strides,
                                                    pad, pad));
        DN(dnnl_primitive_desc_create(&pd, &bdd, ctx->attr, ctx->eng, fpd));
        op = &ctx->ops[op_bwd];
        dn_add_arg(ctx, op, pd, DNNL_ARG_DIFF_DST, &uy, l->dy, 0);
        dn_add_arg(ctx, op, pd, DNNL_ARG_WEIGHTS, &uw, l->wt, 0);
        dn_add_arg(ctx, op, pd, DNNL_ARG_DIFF_SRC, &ux, l->dx, 1);
        dn_finish(ctx, op, pd);
    }

    DN(dnnl_convolution_backward_weights_desc_init(&bwd, dnnl_convolution_direct, &px, &pw, &pb, &py,
                                                   strides, pad, pad));
    DN(dnnl_primitive_desc_create(&pd, &bwd, ctx->attr, ctx->eng, fpd));
    op = &ctx->ops[op_bww];
    dn_add_arg(ctx, op, pd, DNNL_ARG_SRC, &ux, l->x, 0);
    dn_add_arg(ctx, op, pd, DNNL_ARG_DIFF_DST, &uy, l->dy, 0);
    dn_add_arg(ctx, op, pd, DNNL_ARG_DIFF_WEIGHTS, &uw, l->dw, 1);
    dn_add_arg(ctx, op, pd, DNNL_ARG_DIFF_BIAS, &ub, l->db, 1);
    dn_finish(ctx, op, pd);
    DN(dnnl_primitive_desc_destroy(fpd));
}

// A matmul C (m,n) = A (m,k) B (k,n) (+ bias) where A and B may be
// transposed views (tag ba) of the row-major user buffers.
static void dn_matmul_init(dnnl_ctx *ctx, dn_op *op, int m, int n, int k, float *a, int ta, float *b,
                           int tb, float *bias, float *c)
{
    dnnl_dims_t ad = { m, k }, bd = { k, n }, cd = { m, n }, biasd = { 1, n };
    dnnl_memory_desc_t ua, ub, uc, ubias;
    dn_md(&ua, 2, ad, ta ? dnnl_ba : dnnl_ab);
    dn_md(&ub, 2, bd, tb ? dnnl_ba : dnnl_ab);
    dn_md(&uc, 2, cd, dnnl_ab);
    dn_md(&ubias, 2, biasd, dnnl_ab);
    dnnl_matmul_desc_t md;
    DN(dnnl_matmul_desc_init(&md, &ua, &ub, bias ? &ubias : NULL, &uc));
    dnnl_primitive_desc_t pd;
    DN(dnnl_primitive_desc_create(&pd, &md, ctx->attr, ctx->eng, NULL));
    dn_add_arg(ctx, op, pd, DNNL_ARG_SRC, &ua, a, 0);
    dn_add_arg(ctx, op, pd, DNNL_ARG_WEIGHTS, &ub, b, 0);
    if (bias)
        dn_add_arg(ctx, op, pd, DNNL_ARG_BIAS, &ubias, bias, 0);
    dn_add_arg(ctx, op, pd, DNNL_ARG_DST, &uc, c, 1);
    dn_finish(ctx, op, pd);
}

static void dn_init(dnnl_ctx *ctx, net *n, int any)
{
    memset(ctx, 0, sizeof *ctx);
    ctx->any = any;
    DN(dnnl_engine_create(&ctx->eng, dnnl_cpu, 0));
    DN(dnnl_stream_create(&ctx->strm, ctx->eng, dnnl_stream_default_flags));
    DN(dnnl_primitive_attr_create(&ctx->attr));
    DN(dnnl_primitive_attr_set_scratchpad_mode(ctx->attr, dnnl_scratchpad_mode_user));
    dn_conv_init(ctx, &n->c1, OP_C1_FWD, -1, OP_C1_BWW);
    dn_conv_init(ctx, &n->c2, OP_C2_FWD, OP_C2_BWD, OP_C2_BWW);
    dense_layer *ds[2] = { &n->d1, &n->d2 };
    for (int i = 0; i < 2; i++) {
        dense_layer *d = ds[i];
        int base = i == 0 ? OP_D1_FWD : OP_D2_FWD;
        // y = x W + b; dx = dy W^T; dW = x^T dy.
        dn_matmul_init(ctx, &ctx->ops[base], NB, d->out, d->in, d->x, 0, d->wt, 0, d->b, d->y);
        dn_matmul_init(ctx, &ctx->ops[base + 1], NB, d->in, d->out, d->dy, 0, d->wt, 1, NULL, d->dx);
        dn_matmul_init(ctx, &ctx->ops[base + 2], d->in, d->out, NB, d->x, 1, d->dy, 0, NULL, d->dw);
    }
}

static void dn_run(dnnl_ctx *ctx, net *n, int op)
{
    dn_exec(ctx, &ctx->ops[op]);
    if (op == OP_D1_BWW)
        bias_grad(n->d1.dy, NB, n->d1.out, n->d1.db);
    if (op == OP_D2_BWW)
        bias_grad(n->d2.dy, NB, n->d2.out, n->d2.db);
}

// ------------------------------------------------------------------ libxsmm

// libxsmm 1.17's DNN layer for one convolution. The caller provides the
// threads: libxsmm_dnn_execute_st(handle, kind, 0, tid) from each of
// `threads` OpenMP threads.
typedef struct {
    libxsmm_dnn_layer *h;
    libxsmm_dnn_tensor *in, *filt, *out, *din, *dfilt, *dout;
    void *scratch;
    float *xpad, *dxpad; // (NB,H+2p,W+2p,C) copies when pad > 0, owned here
    int ok;
    char why[160];
} xs_layer;

typedef struct {
    int threads;
    int pad; // 0: logical padding; 1: zero rim stored in padded copies
    xs_layer l[2];
} xsmm_ctx;

static libxsmm_dnn_tensor *xs_link(xs_layer *x, libxsmm_dnn_tensor_type t, float *buf)
{
    libxsmm_dnn_err_t st;
    libxsmm_dnn_tensor_datalayout *lay = libxsmm_dnn_create_tensor_datalayout(x->h, t, &st);
    if (lay == NULL || st != LIBXSMM_DNN_SUCCESS) {
        snprintf(x->why, sizeof x->why, "create_tensor_datalayout(%d): %s", (int)t, libxsmm_dnn_get_error(st));
        x->ok = 0;
        return NULL;
    }
    libxsmm_dnn_tensor *ten = libxsmm_dnn_link_tensor(lay, buf, &st);
    libxsmm_dnn_destroy_tensor_datalayout(lay);
    if (ten == NULL || st != LIBXSMM_DNN_SUCCESS) {
        snprintf(x->why, sizeof x->why, "link_tensor(%d): %s", (int)t, libxsmm_dnn_get_error(st));
        x->ok = 0;
        return NULL;
    }
    libxsmm_dnn_err_t b = libxsmm_dnn_bind_tensor(x->h, ten, t);
    if (b != LIBXSMM_DNN_SUCCESS) {
        snprintf(x->why, sizeof x->why, "bind_tensor(%d): %s", (int)t, libxsmm_dnn_get_error(b));
        x->ok = 0;
    }
    return ten;
}

static void xs_init_layer(xsmm_ctx *ctx, xs_layer *x, conv_layer *l)
{
    libxsmm_dnn_conv_desc d;
    memset(&d, 0, sizeof d);
    d.N = NB; d.C = l->c; d.H = l->h; d.W = l->w; d.K = l->o; d.R = 3; d.S = 3;
    d.u = 1; d.v = 1; d.pad_h = 1; d.pad_w = 1;
    // pad 1: the zero rim is stored in padded copies of the input and its
    // gradient (pad_h_in == pad_h). pad 0 ("logical" padding, the NHWC user
    // buffers as they are) is accepted by libxsmm 1.17 but gives a wrong
    // weight gradient for conv2 (see docs/BENCHMARKS.md); --xsmm-pad 0.
    d.pad_h_in = ctx->pad; d.pad_w_in = ctx->pad; d.pad_h_out = 0; d.pad_w_out = 0;
    d.threads = ctx->threads;
    d.datatype_in = LIBXSMM_DNN_DATATYPE_F32;
    d.datatype_out = LIBXSMM_DNN_DATATYPE_F32;
    d.buffer_format = LIBXSMM_DNN_TENSOR_FORMAT_NHWC;
    d.filter_format = LIBXSMM_DNN_TENSOR_FORMAT_RSCK;
    d.algo = LIBXSMM_DNN_CONV_ALGO_DIRECT;
    d.options = LIBXSMM_DNN_CONV_OPTION_OVERWRITE;
    d.fuse_ops = LIBXSMM_DNN_CONV_FUSE_NONE;
    libxsmm_dnn_err_t st;
    x->ok = 1;
    x->h = libxsmm_dnn_create_conv_layer(d, &st);
    if (x->h == NULL || (st != LIBXSMM_DNN_SUCCESS && st != LIBXSMM_DNN_WARN_FALLBACK)) {
        snprintf(x->why, sizeof x->why, "create_conv_layer: %s (%d)", libxsmm_dnn_get_error(st), (int)st);
        x->ok = 0;
        return;
    }
    if (st == LIBXSMM_DNN_WARN_FALLBACK)
        fprintf(stderr, "xsmm: create_conv_layer warns: %s\n", libxsmm_dnn_get_error(st));
    float *xin = l->x, *dxin = l->dx;
    if (ctx->pad) {
        size_t padded = (size_t)NB * (l->h + 2) * (l->w + 2) * l->c;
        xin = x->xpad = falloc(padded);
        if (l->dx)
            dxin = x->dxpad = falloc(padded);
    }
    x->in = xs_link(x, LIBXSMM_DNN_REGULAR_INPUT, xin);
    if (x->ok) x->filt = xs_link(x, LIBXSMM_DNN_REGULAR_FILTER, l->wt);
    if (x->ok) x->out = xs_link(x, LIBXSMM_DNN_REGULAR_OUTPUT, l->y);
    if (x->ok) x->dout = xs_link(x, LIBXSMM_DNN_GRADIENT_OUTPUT, l->dy);
    if (x->ok) x->dfilt = xs_link(x, LIBXSMM_DNN_GRADIENT_FILTER, l->dw);
    if (x->ok && l->dx) x->din = xs_link(x, LIBXSMM_DNN_GRADIENT_INPUT, dxin);
    if (!x->ok)
        return;
    size_t sz = libxsmm_dnn_get_scratch_size(x->h, LIBXSMM_DNN_COMPUTE_KIND_ALL, &st);
    if (st != LIBXSMM_DNN_SUCCESS) {
        snprintf(x->why, sizeof x->why, "get_scratch_size: %s", libxsmm_dnn_get_error(st));
        x->ok = 0;
        return;
    }
    if (sz) {
        if (posix_memalign(&x->scratch, 2097152, sz) != 0)
            die("out of memory");
        st = libxsmm_dnn_bind_scratch(x->h, LIBXSMM_DNN_COMPUTE_KIND_ALL, x->scratch);
        if (st != LIBXSMM_DNN_SUCCESS) {
            snprintf(x->why, sizeof x->why, "bind_scratch: %s", libxsmm_dnn_get_error(st));
            x->ok = 0;
        }
    }
}

static void xs_exec(xsmm_ctx *ctx, xs_layer *x, libxsmm_dnn_compute_kind kind)
{
#pragma omp parallel num_threads(ctx->threads)
    {
        libxsmm_dnn_err_t st = libxsmm_dnn_execute_st(x->h, kind, 0, omp_get_thread_num());
        if (st != LIBXSMM_DNN_SUCCESS) {
            fprintf(stderr, "conv_kernels: libxsmm_dnn_execute_st: %s\n", libxsmm_dnn_get_error(st));
            exit(2);
        }
    }
}

// Copies between the NHWC user buffer (NB,H,W,C) and a zero-rimmed copy
// (NB,H+2,W+2,C); the rim stays zero from allocation.
static void xs_pad_copy(const conv_layer *l, float *padded, float *plain, int to_padded)
{
    size_t row = (size_t)l->w * l->c;
    for (int b = 0; b < NB; b++)
        for (int h = 0; h < l->h; h++) {
            float *p = padded + (((size_t)b * (l->h + 2) + h + 1) * (l->w + 2) + 1) * l->c;
            float *u = plain + (((size_t)b * l->h + h) * l->w) * l->c;
            if (to_padded)
                memcpy(p, u, row * sizeof(float));
            else
                memcpy(u, p, row * sizeof(float));
        }
}

static void xs_run(xsmm_ctx *ctx, net *n, int op)
{
    conv_layer *l = op <= OP_C1_BWW ? &n->c1 : &n->c2;
    xs_layer *x = &ctx->l[op <= OP_C1_BWW ? 0 : 1];
    if (ctx->pad && op != OP_C2_BWD)
        xs_pad_copy(l, x->xpad, l->x, 1);
    if (op == OP_C1_FWD || op == OP_C2_FWD) {
        xs_exec(ctx, x, LIBXSMM_DNN_COMPUTE_KIND_FWD);
        // No bias fusion in 1.17 (LIBXSMM_DNN_CONV_FUSE_NONE only): add it.
        size_t rows = (size_t)NB * l->h * l->w;
        for (size_t r = 0; r < rows; r++)
            for (int o = 0; o < l->o; o++)
                l->y[r * (size_t)l->o + (size_t)o] += l->b[o];
    } else if (op == OP_C2_BWD) {
        xs_exec(ctx, x, LIBXSMM_DNN_COMPUTE_KIND_BWD);
        if (ctx->pad)
            xs_pad_copy(l, x->dxpad, l->dx, 0);
    } else {
        xs_exec(ctx, x, LIBXSMM_DNN_COMPUTE_KIND_UPD);
        bias_grad(l->dy, (size_t)NB * l->h * l->w, l->o, l->db);
    }
}

// ------------------------------------------------------------------ driver

typedef enum { C_DNNL_ANY, C_DNNL_NHWC, C_OPENBLAS, C_BLIS, C_XSMM } cand_kind;
static const char *cand_names[] = { "dnnl-any", "dnnl-nhwc", "im2col-openblas", "im2col-blis", "xsmm" };

typedef struct {
    cand_kind kind;
    dnnl_ctx dn;
    im2col_ctx i2c;
    xsmm_ctx xs;
} cand;

static int cand_has(cand *c, int op)
{
    if (c->kind == C_XSMM) {
        if (op > OP_C2_BWW)
            return 0;
        return c->xs.l[op <= OP_C1_BWW ? 0 : 1].ok;
    }
    return 1;
}

static int xsmm_pad = 1;

static void cand_init(cand *c, cand_kind k, net *n, int threads, int chunk)
{
    memset(c, 0, sizeof *c);
    c->kind = k;
    if (k == C_DNNL_ANY || k == C_DNNL_NHWC) {
        dn_init(&c->dn, n, k == C_DNNL_ANY);
    } else if (k == C_OPENBLAS || k == C_BLIS) {
        c->i2c.lib = k == C_OPENBLAS ? GEMM_OPENBLAS : GEMM_BLIS;
        c->i2c.chunk = chunk;
        c->i2c.col = falloc((size_t)chunk * 28 * 28 * 9 * 32);
    } else {
        libxsmm_init();
        c->xs.threads = threads;
        c->xs.pad = xsmm_pad;
        printf("xsmm padding=%s\n", xsmm_pad ? "physical (padded copies, inside the timing)" : "logical");
        xs_init_layer(&c->xs, &c->xs.l[0], &n->c1);
        xs_init_layer(&c->xs, &c->xs.l[1], &n->c2);
        for (int i = 0; i < 2; i++)
            if (!c->xs.l[i].ok)
                printf("unsupported cand=xsmm layer=conv%d reason=%s\n", i + 1, c->xs.l[i].why);
    }
}

static void cand_run(cand *c, net *n, int op)
{
    switch (c->kind) {
    case C_DNNL_ANY:
    case C_DNNL_NHWC:
        dn_run(&c->dn, n, op);
        break;
    case C_OPENBLAS:
    case C_BLIS:
        if (op <= OP_C1_BWW)
            i2c_conv(&c->i2c, &n->c1, op == OP_C1_FWD ? 0 : 2);
        else if (op <= OP_C2_BWW)
            i2c_conv(&c->i2c, &n->c2, op == OP_C2_FWD ? 0 : op == OP_C2_BWD ? 1 : 2);
        else if (op <= OP_D1_BWW)
            i2c_dense(&c->i2c, &n->d1, op - OP_D1_FWD);
        else
            i2c_dense(&c->i2c, &n->d2, op - OP_D2_FWD);
        break;
    case C_XSMM:
        xs_run(&c->xs, n, op);
        break;
    }
}

static void set_threads(int t)
{
    omp_set_num_threads(t);
    openblas_set_num_threads(t);
    bli_thread_set_num_threads(t);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static const char *lib_of(void *sym)
{
    Dl_info info;
    if (sym && dladdr(sym, &info) && info.dli_fname) {
        const char *s = strrchr(info.dli_fname, '/');
        return s ? s + 1 : info.dli_fname;
    }
    return "?";
}

static void print_env(void)
{
    const dnnl_version_t *v = dnnl_version();
    printf("env onednn=%d.%d.%d cpu_runtime=%u isa=0x%x\n", v->major, v->minor, v->patch, v->cpu_runtime,
           (unsigned)dnnl_get_effective_cpu_isa());
    printf("env openblas=\"%s\"\n", openblas_get_config());
    printf("env blis=%s arch=%s\n", bli_info_get_version_str(), bli_arch_string(bli_arch_query_id()));
    printf("env libxsmm=%s target=%s\n", LIBXSMM_VERSION, libxsmm_get_target_arch());
    printf("env symbol cblas_sgemm=%s bli_sgemm=%s dnnl_primitive_execute=%s\n", lib_of((void *)cblas_sgemm),
           lib_of((void *)bli_sgemm), lib_of((void *)dnnl_primitive_execute));
}

// Runs one candidate: first run of each op kept, `iters` timed rounds over
// all ops, last run compared bitwise with the first; with check, max
// relative error against float64.
static void run_candidate(cand_kind k, int threads, int iters, int warmup, int chunk, int check)
{
    net n;
    net_init(&n);
    cand c;
    double t0 = now_sec();
    cand_init(&c, k, &n, threads, chunk);
    printf("setup cand=%s threads=%d sec=%.3f\n", cand_names[k], threads, now_sec() - t0);
    float *first[OP_COUNT][2];
    double *times = calloc((size_t)OP_COUNT * (size_t)iters, sizeof(double));
    double *rtimes = calloc((size_t)OP_COUNT * (size_t)iters, sizeof(double));
    if (times == NULL || rtimes == NULL)
        die("out of memory");
    for (int op = 0; op < OP_COUNT; op++) {
        if (!cand_has(&c, op))
            continue;
        cand_run(&c, &n, op);
        op_outputs o = outputs_of(&n, op);
        for (int j = 0; j < o.count; j++) {
            first[op][j] = falloc(o.n[j]);
            memcpy(first[op][j], o.p[j], o.n[j] * sizeof(float));
        }
    }
    for (int it = -warmup; it < iters; it++)
        for (int op = 0; op < OP_COUNT; op++) {
            if (!cand_has(&c, op))
                continue;
            double s = now_sec();
            cand_run(&c, &n, op);
            double e = now_sec() - s;
            if (it >= 0) {
                times[op * iters + it] = e;
                if (k == C_DNNL_ANY || k == C_DNNL_NHWC)
                    rtimes[op * iters + it] = c.dn.ops[op].reorder_sec;
            }
        }
    for (int op = 0; op < OP_COUNT; op++) {
        if (!cand_has(&c, op))
            continue;
        op_outputs o = outputs_of(&n, op);
        int same = 1;
        uint64_t h = 0;
        for (int j = 0; j < o.count; j++) {
            same &= memcmp(first[op][j], o.p[j], o.n[j] * sizeof(float)) == 0;
            h ^= fnv(o.p[j], o.n[j]) * (uint64_t)(j + 1);
        }
        double err[2] = { -1, -1 };
        if (check) {
            double *ref[2] = { malloc(o.n[0] * sizeof(double)), malloc((o.count > 1 ? o.n[1] : 1) * sizeof(double)) };
            if (!ref[0] || !ref[1])
                die("out of memory");
            reference(&n, op, ref[0], ref[1]);
            rel_error(&o, ref, err);
            free(ref[0]);
            free(ref[1]);
        }
        double *t = times + op * iters;
        qsort(t, (size_t)iters, sizeof(double), cmp_double);
        double med = iters % 2 ? t[iters / 2] : 0.5 * (t[iters / 2 - 1] + t[iters / 2]);
        double *rt = rtimes + op * iters;
        qsort(rt, (size_t)iters, sizeof(double), cmp_double);
        const char *impl = (k == C_DNNL_ANY || k == C_DNNL_NHWC) ? c.dn.ops[op].impl
                           : k == C_XSMM                         ? "libxsmm_dnn"
                           : k == C_OPENBLAS                     ? "im2col+openblas"
                                                                 : "im2col+blis";
        printf("result cand=%s threads=%d op=%s median_ms=%.4f min_ms=%.4f reorder_ms=%.4f gflops=%.1f bitwise=%s "
               "hash=%016llx relerr=%.3g relerr_bias=%.3g impl=%s\n",
               cand_names[k], threads, op_names[op], 1e3 * med, 1e3 * t[0], 1e3 * rt[iters / 2],
               1e-9 * op_flops(&n, op) / med, same ? "yes" : "NO", (unsigned long long)h, err[0], err[1], impl);
    }
    free(times);
    free(rtimes);
}

// --------------------------------------------------- concurrent replicas

// Two pthreads, each with OpenMP 1 thread and its own oneDNN primitives,
// scratchpads and buffers (as two CPU replicas would have), run conv2's
// three ops; first alone, one after the other, then both at once. Reports
// per-op medians for both phases and whether every output is bitwise equal
// to the one-thread reference run.
typedef struct {
    int id, iters, any;
    pthread_barrier_t *bar;
    net n;
    dnnl_ctx dn;
    double med_ms[3];
    float *ref[3];
    int equal;
} replica;

static const int conc_ops[3] = { OP_C2_FWD, OP_C2_BWD, OP_C2_BWW };

static void replica_phase(replica *r)
{
    double t[64];
    int iters = r->iters > 64 ? 64 : r->iters;
    for (int k = 0; k < 3; k++) {
        for (int it = -2; it < iters; it++) {
            double s = now_sec();
            dn_run(&r->dn, &r->n, conc_ops[k]);
            if (it >= 0)
                t[it] = now_sec() - s;
            op_outputs o = outputs_of(&r->n, conc_ops[k]);
            if (r->ref[k] == NULL) {
                r->ref[k] = falloc(o.n[0]);
                memcpy(r->ref[k], o.p[0], o.n[0] * sizeof(float));
            } else if (memcmp(r->ref[k], o.p[0], o.n[0] * sizeof(float)) != 0) {
                r->equal = 0;
            }
        }
        qsort(t, (size_t)iters, sizeof(double), cmp_double);
        r->med_ms[k] = 1e3 * t[iters / 2];
    }
}

static void *replica_main(void *arg)
{
    replica *r = arg;
    omp_set_num_threads(1);
    pthread_barrier_wait(r->bar);
    replica_phase(r);
    return NULL;
}

static void run_concurrent(int iters, int any)
{
    replica rs[2];
    pthread_barrier_t bar;
    omp_set_num_threads(1);
    for (int i = 0; i < 2; i++) {
        memset(&rs[i], 0, sizeof rs[i]);
        rs[i].id = i;
        rs[i].iters = iters;
        rs[i].equal = 1;
        rs[i].bar = &bar;
        net_init(&rs[i].n);
        dn_init(&rs[i].dn, &rs[i].n, any);
    }
    // Alone: each replica on the main thread in turn; this also records the
    // reference outputs.
    double solo[2][3];
    for (int i = 0; i < 2; i++) {
        replica_phase(&rs[i]);
        memcpy(solo[i], rs[i].med_ms, sizeof solo[i]);
    }
    int cross = 1;
    for (int k = 0; k < 3; k++) {
        op_outputs o = outputs_of(&rs[0].n, conc_ops[k]);
        cross &= memcmp(rs[0].ref[k], rs[1].ref[k], o.n[0] * sizeof(float)) == 0;
    }
    pthread_barrier_init(&bar, NULL, 2);
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, replica_main, &rs[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&bar);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 3; k++)
            printf("concurrent cand=%s replica=%d op=%s alone_ms=%.4f together_ms=%.4f\n",
                   any ? "dnnl-any" : "dnnl-nhwc", i, op_names[conc_ops[k]], solo[i][k], rs[i].med_ms[k]);
    printf("concurrent cand=%s bitwise_equal_alone_vs_together=%s replicas_equal=%s impl=%s\n",
           any ? "dnnl-any" : "dnnl-nhwc", rs[0].equal && rs[1].equal ? "yes" : "NO", cross ? "yes" : "NO",
           rs[0].dn.ops[OP_C2_FWD].impl);
}

int main(int argc, char **argv)
{
    int threads = 1, iters = 15, warmup = 3, chunk = 16, check = 0, conc = 0, env = 0;
    int k = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--check")) { check = 1; continue; }
        if (!strcmp(a, "--env")) { env = 1; continue; }
        if (v == NULL)
            die("usage: conv_kernels --cand NAME [--threads T] [--iters N] [--warmup N] [--chunk IMAGES] "
                "[--check] [--concurrent] [--env]");
        if (!strcmp(a, "--cand")) {
            for (int j = 0; j < 5; j++)
                if (!strcmp(v, cand_names[j]))
                    k = j;
            if (k < 0)
                die("unknown --cand; use dnnl-any, dnnl-nhwc, im2col-openblas, im2col-blis or xsmm");
        } else if (!strcmp(a, "--threads")) threads = atoi(v);
        else if (!strcmp(a, "--iters")) iters = atoi(v);
        else if (!strcmp(a, "--warmup")) warmup = atoi(v);
        else if (!strcmp(a, "--chunk")) chunk = atoi(v);
        else if (!strcmp(a, "--concurrent")) conc = atoi(v);
        else if (!strcmp(a, "--xsmm-pad")) xsmm_pad = atoi(v);
        else die("unknown option; run without arguments for usage");
        i++;
    }
    if (threads < 1 || iters < 1 || chunk < 1 || chunk > NB || warmup < 0)
        die("--threads, --iters and --chunk (<= 128) must be positive");
    set_threads(threads);
    if (env)
        print_env();
    if (conc) {
        run_concurrent(iters, k != C_DNNL_NHWC);
        return 0;
    }
    if (k < 0) {
        if (env)
            return 0;
        die("--cand is required");
    }
    run_candidate((cand_kind)k, threads, iters, warmup, chunk, check);
    return 0;
}
