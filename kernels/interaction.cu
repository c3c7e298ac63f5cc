// The DLRM dot interaction. Plain CUDA C compiled at run time by NVRTC; no host code.
//
// Inputs are n row-major [rows, d] matrices, each with its own pointer and leading dimension,
// given by meta (4 ints per input: [ptr low, ptr high, ld, 0]); input 0 is the bottom-MLP output.
// Output row r is x0 followed by x_i . x_j for i in 1..n, j in 0..i (the strict lower triangle
// of X X^T, row by row): pair (i, j) goes to column d + i (i - 1) / 2 + j, so out is
// [rows, d + n (n - 1) / 2] with leading dimension out_ld.
//
// Grid: one block per row (gridDim.x = rows); any block size. Dynamic shared memory: n * d
// floats (the row's n input vectors).

// Pointer stored as two 32-bit words (low word first) in a metadata array.
__device__ __forceinline__ const float* meta_ptr(const int* m) {
    unsigned long long lo = (unsigned long long)(unsigned int)m[0];
    unsigned long long hi = (unsigned long long)(unsigned int)m[1];
    return (const float*)((hi << 32) | lo);
}

extern "C" __global__ void dot_interaction(const int* __restrict__ meta, int n, int d,
                                           float* __restrict__ out, int out_ld) {
    extern __shared__ float xs[];
    const long long r = blockIdx.x;
    const int nd = n * d;
    for (int k = threadIdx.x; k < nd; k += blockDim.x) {
        const int i = k / d;
        const int c = k - i * d;
        const int* m = meta + 4 * i;
        xs[k] = meta_ptr(m)[r * m[2] + c];
    }
    __syncthreads();
    float* orow = out + r * out_ld;
    for (int c = threadIdx.x; c < d; c += blockDim.x) {
        orow[c] = xs[c];
    }
    const int pairs = n * (n - 1) / 2;
    for (int p = threadIdx.x; p < pairs; p += blockDim.x) {
        // Row i of the triangle holds pairs i (i - 1) / 2 .. i (i + 1) / 2 - 1: estimate i from
        // the inverse, then correct the float rounding exactly.
        int i = (int)((1.0f + sqrtf(1.0f + 8.0f * (float)p)) * 0.5f);
        while (i > 1 && i * (i - 1) / 2 > p) {
            --i;
        }
        while ((i + 1) * i / 2 <= p) {
            ++i;
        }
        const int j = p - i * (i - 1) / 2;
        const float* a = xs + i * d;
        const float* b = xs + j * d;
        float s = 0.0f;
        for (int c = 0; c < d; ++c) {
            s += a[c] * b[c];
        }
        orow[d + p] = s;
    }
}
