// word_sums.wgsl: adding counts into u32 words, shared by tally.wgsl and bootstrap.wgsl
// (src/shaders.rs composes it into both; they declare `wg_words`, an array of
// workgroup atomics, and `words`, the storage atomics). A sum wider than 32 bits is a
// (low, high) word pair with an explicit carry, so every count stays an exact integer.

// Adds (lo, hi) to the workgroup word pair at `i`, carrying out of the low word.
fn add_pair_wg(i: u32, lo: u32, hi: u32) {
    let old = atomicAdd(&wg_words[i], lo);
    let carry = select(0u, 1u, old + lo < old);
    if (hi + carry != 0u) {
        atomicAdd(&wg_words[i + 1u], hi + carry);
    }
}

// Adds (lo, hi) to the storage word pair at `i`.
fn add_pair(i: u32, lo: u32, hi: u32) {
    let old = atomicAdd(&words[i], lo);
    let carry = select(0u, 1u, old + lo < old);
    if (hi + carry != 0u) {
        atomicAdd(&words[i + 1u], hi + carry);
    }
}

// Adds `v` to the storage word at `i` (no atomic for 0).
fn add_word(i: u32, v: u32) {
    if (v != 0u) {
        atomicAdd(&words[i], v);
    }
}
