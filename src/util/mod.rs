//! Small shared helpers: seeded random numbers, devices, cache folders, atomic writes,
//! downloads, the process's allocator and resource usage.

pub mod alloc;
pub mod atomic;
pub mod device;
pub mod download;
pub mod image_file;
pub mod rng;
pub mod rusage;
pub mod testdata;
pub mod threads;
pub mod untar;
