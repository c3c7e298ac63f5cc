// Embedding-bag kernels: pooled lookups of one table per launch, or of many tables in one launch
// (table-batched). Plain CUDA C compiled at run time by NVRTC; no host code.
//
// Input packet. Every launch reads its indices and offsets from one per-context device buffer,
// the "packet", laid out in 32-bit words:
//
//   word 0                    n: the number of samples staged by the last upload
//   words 1..3                reserved (zero)
//   words 4..4 + (n + 1) * S  offsets, sample-major: the offset of (sample b, slot s) is word
//                             4 + b * S + s, where S is the number of sparse features (slots)
//   after that, 8-aligned     the indices of all features, packed, as I (int or long long)
//
// An offset is an element position in the packet viewed as an array of I, so bag (b, s) is
// ((const I*)packet)[offs[b * S + s] .. offs[(b + 1) * S + s]). Samples b >= n (padding up to a
// CUDA-graph bucket) are empty bags and give zeros, so the packet never needs padding.
//
// Outputs are row-major with a leading dimension `out_ld` (in floats), so a bag can be written
// straight into its column slice of a wider (concatenation) buffer: the caller passes `out`
// already offset to the first column. Rows are processed by `lanes` threads each: with
// `vec != 0` (dim % 4 == 0 and a 16-byte-aligned table) a lane owns 4 consecutive columns and
// loads them as one float4, otherwise a lane owns one column. Consecutive lanes read consecutive
// 16-byte (or 4-byte) words of the same table row, so the row gather is coalesced.
//
// Sums are accumulated in index order, like the CPU reference, so sum pooling matches it exactly.

#define PACKET_HEADER 4

// Pointer stored as two 32-bit words (low word first) in a metadata array.
__device__ __forceinline__ const float* meta_ptr(const int* m) {
    unsigned long long lo = (unsigned long long)(unsigned int)m[0];
    unsigned long long hi = (unsigned long long)(unsigned int)m[1];
    return (const float*)((hi << 32) | lo);
}

__device__ __forceinline__ void add4(float4& acc, float4 v) {
    acc.x += v.x;
    acc.y += v.y;
    acc.z += v.z;
    acc.w += v.w;
}

// Pools one lane of bag (b, slot) into out[b * out_ld + lane columns].
template <typename I>
__device__ __forceinline__ void bag_lane(const float* __restrict__ table, int dim, int vec,
                                         const int* __restrict__ packet, int slots, int slot,
                                         int b, int lane, int mean, float* __restrict__ out,
                                         int out_ld) {
    const int n = packet[0];
    const int* __restrict__ offs = packet + PACKET_HEADER;
    const I* __restrict__ idx = (const I*)packet;
    long long start = 0;
    long long end = 0;
    if (b < n) {
        start = offs[(long long)b * slots + slot];
        end = offs[(long long)(b + 1) * slots + slot];
    }
    const float count = (float)(end - start);
    float* orow = out + (long long)b * out_ld;
    if (vec) {
        const float4* __restrict__ t4 = (const float4*)table;
        const long long d4 = dim >> 2;
        float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        long long i = start;
        // Four rows in flight per iteration; added in index order.
        for (; i + 4 <= end; i += 4) {
            const long long r0 = (long long)idx[i];
            const long long r1 = (long long)idx[i + 1];
            const long long r2 = (long long)idx[i + 2];
            const long long r3 = (long long)idx[i + 3];
            const float4 v0 = __ldg(t4 + r0 * d4 + lane);
            const float4 v1 = __ldg(t4 + r1 * d4 + lane);
            const float4 v2 = __ldg(t4 + r2 * d4 + lane);
            const float4 v3 = __ldg(t4 + r3 * d4 + lane);
            add4(acc, v0);
            add4(acc, v1);
            add4(acc, v2);
            add4(acc, v3);
        }
        for (; i < end; ++i) {
            const long long r = (long long)idx[i];
            add4(acc, __ldg(t4 + r * d4 + lane));
        }
        if (mean && end > start) {
            acc.x = acc.x / count;
            acc.y = acc.y / count;
            acc.z = acc.z / count;
            acc.w = acc.w / count;
        }
        // A float4 store needs a 16-byte-aligned row start: an aligned base and out_ld % 4 == 0.
        const bool aligned = ((((unsigned long long)out) & 15ull) == 0ull) && ((out_ld & 3) == 0);
        if (aligned) {
            ((float4*)orow)[lane] = acc;
        } else {
            float* o = orow + 4 * lane;
            o[0] = acc.x;
            o[1] = acc.y;
            o[2] = acc.z;
            o[3] = acc.w;
        }
    } else {
        float acc = 0.0f;
        long long i = start;
        for (; i + 4 <= end; i += 4) {
            const long long r0 = (long long)idx[i];
            const long long r1 = (long long)idx[i + 1];
            const long long r2 = (long long)idx[i + 2];
            const long long r3 = (long long)idx[i + 3];
            const float v0 = __ldg(table + r0 * dim + lane);
            const float v1 = __ldg(table + r1 * dim + lane);
            const float v2 = __ldg(table + r2 * dim + lane);
            const float v3 = __ldg(table + r3 * dim + lane);
            acc += v0;
            acc += v1;
            acc += v2;
            acc += v3;
        }
        for (; i < end; ++i) {
            const long long r = (long long)idx[i];
            acc += __ldg(table + r * dim + lane);
        }
        if (mean && end > start) {
            acc = acc / count;
        }
        orow[lane] = acc;
    }
}

// One table. Grid: ceil(batch * lanes / blockDim.x) blocks, 1-D; lanes = vec ? dim / 4 : dim.
// Thread t handles sample t / lanes, lane t % lanes.
template <typename I>
__device__ __forceinline__ void embedding_bag_body(const float* __restrict__ table, int dim,
                                                   int vec, const int* __restrict__ packet,
                                                   int slots, int slot, int batch, int mean,
                                                   float* __restrict__ out, int out_ld) {
    const int lanes = vec ? (dim >> 2) : dim;
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long b = t / lanes;
    if (b >= batch) {
        return;
    }
    const int lane = (int)(t - b * lanes);
    bag_lane<I>(table, dim, vec, packet, slots, slot, (int)b, lane, mean, out, out_ld);
}

extern "C" __global__ void embedding_bag_i32(const float* __restrict__ table, int dim, int vec,
                                             const int* __restrict__ packet, int slots, int slot,
                                             int batch, int mean, float* __restrict__ out,
                                             int out_ld) {
    embedding_bag_body<int>(table, dim, vec, packet, slots, slot, batch, mean, out, out_ld);
}

extern "C" __global__ void embedding_bag_i64(const float* __restrict__ table, int dim, int vec,
                                             const int* __restrict__ packet, int slots, int slot,
                                             int batch, int mean, float* __restrict__ out,
                                             int out_ld) {
    embedding_bag_body<long long>(table, dim, vec, packet, slots, slot, batch, mean, out,
                                  out_ld);
}

// Table-batched: all tables of `meta` in one launch. meta holds 8 ints per table:
//   [table ptr low, table ptr high, dim, out_col, slot, mean, vec, 0]
// Grid: x = ceil(batch * max_lanes / blockDim.x), y = number of tables. Block (x, t) serves
// table t; threads past that table's batch * lanes return.
template <typename I>
__device__ __forceinline__ void tbe_body(const int* __restrict__ meta,
                                         const int* __restrict__ packet, int slots, int batch,
                                         float* __restrict__ out, int out_ld) {
    const int* m = meta + 8 * blockIdx.y;
    const float* table = meta_ptr(m);
    const int dim = m[2];
    const int out_col = m[3];
    const int slot = m[4];
    const int mean = m[5];
    const int vec = m[6];
    const int lanes = vec ? (dim >> 2) : dim;
    const long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long b = t / lanes;
    if (b >= batch) {
        return;
    }
    const int lane = (int)(t - b * lanes);
    bag_lane<I>(table, dim, vec, packet, slots, slot, (int)b, lane, mean, out + out_col, out_ld);
}

extern "C" __global__ void tbe_i32(const int* __restrict__ meta, const int* __restrict__ packet,
                                   int slots, int batch, float* __restrict__ out, int out_ld) {
    tbe_body<int>(meta, packet, slots, batch, out, out_ld);
}

extern "C" __global__ void tbe_i64(const int* __restrict__ meta, const int* __restrict__ packet,
                                   int slots, int batch, float* __restrict__ out, int out_ld) {
    tbe_body<long long>(meta, packet, slots, batch, out, out_ld);
}
