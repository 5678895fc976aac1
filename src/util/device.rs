//! Choosing the libtorch device.

use anyhow::bail;
use tch::Device;

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU).
///
/// Errors: an unknown name, or `cuda` asked for on a machine where libtorch sees no GPU.
pub fn parse_device(name: &str) -> crate::Result<Device> {
    let name = name.trim().to_ascii_lowercase();
    match name.as_str() {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(Device::cuda_if_available()),
        "cuda" | "gpu" => cuda(0),
        _ => match name.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => cuda(i),
            _ => bail!("unknown device '{name}': use cpu, cuda, cuda:N or auto"),
        },
    }
}

/// The name [`parse_device`] reads back: `cpu`, `cuda:N` (other devices as tch prints them).
pub fn device_name(d: Device) -> String {
    match d {
        Device::Cpu => "cpu".to_string(),
        Device::Cuda(i) => format!("cuda:{i}"),
        d => format!("{d:?}").to_ascii_lowercase(),
    }
}

fn cuda(i: usize) -> crate::Result<Device> {
    let n = tch::Cuda::device_count();
    if (i as i64) < n {
        Ok(Device::Cuda(i))
    } else if n == 0 {
        bail!("device cuda:{i} was asked for, but libtorch sees no CUDA GPU on this machine; use --device cpu")
    } else {
        bail!("device cuda:{i} was asked for, but this machine has {n} CUDA GPU(s)")
    }
}
