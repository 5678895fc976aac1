//! Small shared helpers: seeded random numbers, devices, cache folders, atomic writes,
//! downloads.

pub mod atomic;
pub mod device;
pub mod download;
pub mod rng;
pub mod testdata;
pub mod threads;
pub mod untar;
