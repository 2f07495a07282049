// Probe of the section 11 mask functions of af_attn.cuh (pasted above this file by
// codegen/tests/new_masks_sim.rs). Positions are base + [0, n); intervals[2 t], intervals[2 t + 1]
// is the t-th interval [lo, hi] of [0, n). mask 0: chunked_causal(a), 1: dilated_causal(a, b).
// Thread t writes row t of the element predicate (t < n), the class of every tile whose
// query positions are interval t (one byte per key interval) and the key range of interval t.
extern "C" __global__ void nm_probe(int mask, long long base, int n, int seq_k, int a, int b,
                                    const int* intervals, int n_ivl, unsigned char* pred,
                                    unsigned char* tiles, long long* keys) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t < n) {
        for (int j = 0; j < n; ++j) {
            const long long q = base + t, kv = base + j;
            pred[(long long)t * n + j] =
                mask == 0 ? af_mask_chunked_causal(q, kv, a) : af_mask_dilated_causal(q, kv, a, b);
        }
    }
    if (t >= n_ivl) return;
    const long long p_lo = base + intervals[2 * t], p_hi = base + intervals[2 * t + 1];
    for (int u = 0; u < n_ivl; ++u) {
        const long long c0 = base + intervals[2 * u], c1 = base + intervals[2 * u + 1];
        tiles[(long long)t * n_ivl + u] = (unsigned char)(mask == 0 ? af_tile_chunked_causal(p_lo, p_hi, c0, c1, a)
                                                                    : af_tile_dilated_causal(p_lo, p_hi, c0, c1, a, b));
    }
    keys[2 * t] = mask == 0 ? af_keys_lo_chunked_causal(p_lo, p_hi, seq_k, a)
                            : af_keys_lo_dilated_causal(p_lo, p_hi, seq_k, a, b);
    keys[2 * t + 1] = mask == 0 ? af_keys_hi_chunked_causal(p_lo, p_hi, seq_k, a)
                                : af_keys_hi_dilated_causal(p_lo, p_hi, seq_k, a, b);
}
