//! The ten call shapes of the NinjaRMI paper's Table 1 (seed 004, section 3.1.2).

use serde::Serialize;

/// One row of Table 1: what a call sends and what it returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Shape {
    /// `f()`
    Void,
    /// `f(int)`
    Int,
    /// `int f(int)`
    IntInt,
    /// `int f(int,int,int,int)`
    Int4,
    /// `f(byte[n])`
    Bytes(usize),
    /// `byte[n] f(int)`
    ReturnBytes(usize),
}

/// The rows in the paper's order.
pub const TABLE1: [Shape; 10] = [
    Shape::Void,
    Shape::Int,
    Shape::IntInt,
    Shape::Int4,
    Shape::Bytes(100),
    Shape::Bytes(1000),
    Shape::Bytes(10000),
    Shape::ReturnBytes(100),
    Shape::ReturnBytes(1000),
    Shape::ReturnBytes(10000),
];

/// Size of an archived `Vec<u8>` header (relative pointer + length, 32-bit).
const VEC_HEADER: usize = 8;

impl Shape {
    /// The paper's signature for the row.
    pub fn name(self) -> String {
        match self {
            Shape::Void => "f()".into(),
            Shape::Int => "f(int)".into(),
            Shape::IntInt => "int f(int)".into(),
            Shape::Int4 => "int f(int,int,int,int)".into(),
            Shape::Bytes(n) => format!("f(byte[{n}])"),
            Shape::ReturnBytes(n) => format!("byte[{n}] f(int)"),
        }
    }

    /// A short identifier for file names and criterion ids.
    pub fn id(self) -> String {
        match self {
            Shape::Void => "void".into(),
            Shape::Int => "int".into(),
            Shape::IntInt => "int_int".into(),
            Shape::Int4 => "int4".into(),
            Shape::Bytes(n) => format!("bytes{n}"),
            Shape::ReturnBytes(n) => format!("ret_bytes{n}"),
        }
    }

    /// The method id the benchmark service serves this shape under.
    pub fn method_id(self) -> u32 {
        match self {
            Shape::Void => 1,
            Shape::Int => 2,
            Shape::IntInt => 3,
            Shape::Int4 => 4,
            Shape::Bytes(_) => 5,
            Shape::ReturnBytes(_) => 6,
        }
    }

    /// True when the call returns nothing (so a one-way call can carry it).
    pub fn no_result(self) -> bool {
        matches!(self, Shape::Void | Shape::Int | Shape::Bytes(_))
    }

    /// Bytes of argument data as marshalled (the rkyv archive of the arguments); the raw UDP
    /// floor sends exactly this much.
    pub fn request_len(self) -> usize {
        match self {
            Shape::Void => 0,
            Shape::Int | Shape::IntInt | Shape::ReturnBytes(_) => 4,
            Shape::Int4 => 16,
            Shape::Bytes(n) => n + VEC_HEADER,
        }
    }

    /// Bytes of result data as marshalled; the raw UDP floor answers with exactly this much.
    pub fn response_len(self) -> usize {
        match self {
            Shape::Void | Shape::Int | Shape::Bytes(_) => 0,
            Shape::IntInt | Shape::Int4 => 4,
            Shape::ReturnBytes(n) => n + VEC_HEADER,
        }
    }

    /// The paper's "local method" time for this row, in µs (Table 1). The extracted text of
    /// the paper keeps only this column and the null RMI time (0.82 ms), beside the raw
    /// UDP round trip between two C programs (0.185 ms).
    pub fn paper_local_us(self) -> f64 {
        match self {
            Shape::Void => 0.19,
            Shape::Int => 0.20,
            Shape::IntInt => 0.18,
            Shape::Int4 => 0.22,
            Shape::Bytes(100) => 0.19,
            Shape::Bytes(1000) => 0.20,
            Shape::Bytes(_) => 0.21,
            Shape::ReturnBytes(100) => 0.19,
            Shape::ReturnBytes(1000) => 0.20,
            Shape::ReturnBytes(_) => 0.20,
        }
    }

    /// The paper's NinjaRMI round trip for this row, in µs, where the text gives it.
    pub fn paper_rmi_us(self) -> Option<f64> {
        (self == Shape::Void).then_some(820.0)
    }
}

/// The paper's raw UDP round trip between two C programs, µs.
pub const PAPER_RAW_UDP_US: f64 = 185.0;

#[cfg(test)]
mod tests {
    use super::*;

    /// The declared marshalled sizes match what rkyv actually produces.
    #[test]
    fn request_and_response_sizes_match_rkyv() {
        type E = rkyv::rancor::Error;
        for s in TABLE1 {
            let req = match s {
                Shape::Void => rkyv::to_bytes::<E>(&()).unwrap().len(),
                Shape::Int | Shape::IntInt | Shape::ReturnBytes(_) => rkyv::to_bytes::<E>(&7i32).unwrap().len(),
                Shape::Int4 => rkyv::to_bytes::<E>(&[1i32, 2, 3, 4]).unwrap().len(),
                Shape::Bytes(n) => rkyv::to_bytes::<E>(&vec![0u8; n]).unwrap().len(),
            };
            assert_eq!(req, s.request_len(), "{}", s.name());
        }
    }
}
