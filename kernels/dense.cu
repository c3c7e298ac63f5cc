// Element-wise dense kernels: the bias + activation epilogue of a GEMM, the column-slice copies
// of a concatenation, and the element-wise part of a DCNv2 cross layer. Plain CUDA C compiled
// at run time by NVRTC; no host code.
//
// Every matrix is row-major with a leading dimension (`*_ld`, in floats); a pointer passed in is
// already offset to the first column of its slice. All kernels are 1-D over rows * cols
// elements (thread t handles row t / cols, column t % cols), so consecutive threads touch
// consecutive columns of a row.

// Pointer stored as two 32-bit words (low word first) in a metadata array.
__device__ __forceinline__ const float* meta_ptr(const int* m) {
    unsigned long long lo = (unsigned long long)(unsigned int)m[0];
    unsigned long long hi = (unsigned long long)(unsigned int)m[1];
    return (const float*)((hi << 32) | lo);
}

// The logistic function without overflow for any input.
__device__ __forceinline__ float sigmoid_stable(float x) {
    if (x >= 0.0f) {
        return 1.0f / (1.0f + expf(-x));
    }
    const float e = expf(x);
    return e / (1.0f + e);
}

// y[r, c] = act(y[r, c] + bias[c]) for r < rows, c < cols; act 0 = none, 1 = relu, 2 = sigmoid.
// `bias` may be null (no bias). Grid: ceil(rows * cols / blockDim.x).
extern "C" __global__ void bias_act(float* __restrict__ y, int ld, const float* __restrict__ bias,
                                    int rows, int cols, int act) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)rows * cols;
    if (t >= total) {
        return;
    }
    const long long r = t / cols;
    const int c = (int)(t - r * cols);
    float* p = y + r * ld + c;
    float v = *p;
    if (bias != 0) {
        v = v + bias[c];
    }
    if (act == 1) {
        v = fmaxf(v, 0.0f);
    } else if (act == 2) {
        v = sigmoid_stable(v);
    }
    *p = v;
}

// Copies column slices into a concatenation buffer. meta holds 8 ints per part:
//   [src ptr low, src ptr high, src_ld, width, out_col, 0, 0, 0]
// and part p copies src[r, 0..width) to out[r, out_col..out_col + width) for r < rows.
// Grid: x = ceil(rows * max_width / blockDim.x), y = number of parts.
extern "C" __global__ void concat_parts(const int* __restrict__ meta, float* __restrict__ out,
                                        int out_ld, int rows) {
    const int* m = meta + 8 * blockIdx.y;
    const float* __restrict__ src = meta_ptr(m);
    const int src_ld = m[2];
    const int width = m[3];
    const int out_col = m[4];
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)rows * width;
    if (t >= total) {
        return;
    }
    const long long r = t / width;
    const int c = (int)(t - r * width);
    out[r * out_ld + out_col + c] = src[r * src_ld + c];
}

// The element-wise part of a DCNv2 cross layer, after the two GEMMs wrote Y = (xl V^T) U^T into
// out: out[r, c] = x0[r, c] * (out[r, c] + bias[c]) + xl[r, c]. Grid: ceil(rows * cols / block).
extern "C" __global__ void dcn_cross_epilogue(float* __restrict__ out, int out_ld,
                                              const float* __restrict__ x0, int x0_ld,
                                              const float* __restrict__ xl, int xl_ld,
                                              const float* __restrict__ bias, int rows,
                                              int cols) {
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)rows * cols;
    if (t >= total) {
        return;
    }
    const long long r = t / cols;
    const int c = (int)(t - r * cols);
    float* p = out + r * out_ld + c;
    *p = x0[r * x0_ld + c] * (*p + bias[c]) + xl[r * xl_ld + c];
}
