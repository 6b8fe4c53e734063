//! The evaluation entry point on arbitrary bytes: the bytes become a tiny source/target
//! pair (raw f32 bits for logits, so NaN/inf occur; signed bytes for labels, so
//! out-of-range labels occur; length mismatches and odd options too), then `evaluate`
//! runs on the CPU backend. It must return Ok or a typed error, never panic.
#![no_main]

use conformal_gpu::backend::CpuBackend;
use conformal_gpu::data::PredictionSet;
use conformal_gpu::methods::evaluate::{evaluate, EvalOptions, TemperatureChoice};
use libfuzzer_sys::fuzz_target;
use ndarray::{Array1, Array2};

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn f32(&mut self) -> f32 {
        let b = [self.u8(), self.u8(), self.u8(), self.u8()];
        // Mostly small finite values so the numerics are exercised, sometimes raw bits.
        if b[3] & 0xC0 == 0xC0 {
            f32::from_le_bytes(b)
        } else {
            (i16::from_le_bytes([b[0], b[1]]) as f32) / 256.0
        }
    }
    fn f64(&mut self) -> f64 {
        let b: [u8; 8] = std::array::from_fn(|_| self.u8());
        f64::from_le_bytes(b)
    }
}

fn set(b: &mut Bytes<'_>, name: &str, k: usize, labelled: bool) -> PredictionSet {
    let n = (b.u8() % 12) as usize;
    let flags = b.u8();
    let logits: Vec<f32> = (0..n * k).map(|_| b.f32()).collect();
    let logits = Array2::from_shape_vec((n, k), logits).unwrap_or_default();
    let mut s = PredictionSet::new(name, logits);
    if labelled || flags & 1 != 0 {
        // Length mismatch now and then.
        let len = if flags & 2 != 0 { n + 1 } else { n };
        let labels: Vec<i64> = (0..len)
            .map(|_| {
                let v = b.u8() as i8 as i64;
                if flags & 4 != 0 {
                    v
                } else {
                    v.rem_euclid(k as i64 + 1) - 1
                }
            })
            .collect();
        s = s.with_labels(Array1::from(labels));
    }
    if flags & 8 != 0 {
        s.hospital = Some((0..n).map(|_| (b.u8() % 3) as i64).collect());
    }
    if flags & 16 != 0 {
        s.slide = Some((0..n).map(|_| (b.u8() % 5) as i64).collect());
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let k = (b.u8() % 6) as usize; // 0..=5: K < 2 occurs
    let n_targets = (b.u8() % 3) as usize;
    let n_alpha = (b.u8() % 4) as usize;
    let alphas: Vec<f64> = (0..n_alpha)
        .map(|_| match b.u8() {
            255 => b.f64(),
            v => v as f64 / 254.0,
        })
        .collect();
    let temperature = match b.u8() % 4 {
        0 | 1 => TemperatureChoice::FitSource,
        2 => TemperatureChoice::Fixed(match b.u8() {
            255 => b.f64(),
            v => v as f64 / 16.0,
        }),
        _ => TemperatureChoice::FitOther,
    };
    let rows = b.u8() & 1 != 0;
    let source = set(&mut b, "source", k, true);
    let targets: Vec<PredictionSet> = (0..n_targets)
        .map(|i| {
            let tk = if b.u8() == 0 { k + 1 } else { k };
            set(&mut b, &format!("target{i}"), tk, false)
        })
        .collect();
    let temp_set = (b.u8() & 1 != 0).then(|| set(&mut b, "temp", k, true));
    let options = EvalOptions {
        alphas,
        temperature,
        rows,
    };
    let _ = evaluate(&CpuBackend, &source, &targets, temp_set.as_ref(), &options);
});
