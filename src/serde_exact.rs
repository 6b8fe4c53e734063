//! Serde helpers that write f32 values as JSON numbers holding the f32 exactly (as the
//! f64 of the same value) and refuse, on reading, a number that is not an f32. Thresholds
//! read back from a calibration file must be the very bits the fit chose: serde's own f32
//! path parses to f64 and rounds again, which can land one ulp off at a rounding tie.

use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

fn exact<E: serde::de::Error>(v: f64) -> Result<f32, E> {
    let f = v as f32;
    if f as f64 == v || (v.is_nan() && f.is_nan()) {
        Ok(f)
    } else {
        Err(E::custom(format!("{v} is not an f32 value")))
    }
}

/// `f32` as an exact JSON number.
pub mod one {
    use super::*;
    /// Serialise.
    pub fn serialize<S: Serializer>(v: &f32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(*v as f64)
    }
    /// Deserialise, refusing numbers that are not f32 values.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f32, D::Error> {
        exact(f64::deserialize(d)?)
    }
}

/// `Option<f32>` as an exact JSON number or `null`.
pub mod opt {
    use super::*;
    /// Serialise.
    pub fn serialize<S: Serializer>(v: &Option<f32>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.serialize_some(&(*v as f64)),
            None => s.serialize_none(),
        }
    }
    /// Deserialise, refusing numbers that are not f32 values.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f32>, D::Error> {
        Option::<f64>::deserialize(d)?.map(exact).transpose()
    }
}

/// `Vec<f32>` as exact JSON numbers.
pub mod vec {
    use super::*;
    /// Serialise.
    pub fn serialize<S: Serializer>(v: &[f32], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|&x| x as f64))
    }
    /// Deserialise, refusing numbers that are not f32 values.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f32>, D::Error> {
        Vec::<f64>::deserialize(d)?.into_iter().map(exact).collect()
    }
}

/// `Vec<Option<f32>>` as exact JSON numbers or `null`.
pub mod vec_opt {
    use super::*;
    /// Serialise.
    pub fn serialize<S: Serializer>(v: &[Option<f32>], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|x| x.map(|x| x as f64)))
    }
    /// Deserialise, refusing numbers that are not f32 values.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Option<f32>>, D::Error> {
        Vec::<Option<f64>>::deserialize(d)?
            .into_iter()
            .map(|x| x.map(exact).transpose())
            .collect()
    }
}

/// `u128` as a decimal string (JSON numbers past 2^53 are not portable).
pub mod u128_str {
    use super::*;
    /// Serialise.
    pub fn serialize<S: Serializer>(v: &u128, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.to_string())
    }
    /// Deserialise.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u128, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|_| D::Error::custom(format!("{s:?} is not an unsigned integer")))
    }
}
