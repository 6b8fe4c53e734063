//! The npz/npy reader on arbitrary bytes: Ok or a typed error, never a panic, and never
//! an allocation beyond what the bytes can back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = conformal_gpu::data::load_npz_bytes(data, "fuzz") {
        // A set the reader accepts is valid by construction.
        assert!(set.validate().is_ok());
        assert!(set.k() >= 2);
    }
});
