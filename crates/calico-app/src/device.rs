//! Which device a model answers on: `--device cpu` (the default) or
//! `--device cuda[:N]` (docs/gpu.md).
//!
//! Every command that runs a model parses its `--device` into a
//! [`DeviceSpec`] and opens it once, before anything is written; a build
//! without candle's CUDA backend, or a machine without the GPU asked for,
//! is refused as bad input with what to do about it.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::error::{AppError, Result};

/// The device named on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSpec {
    /// The CPU, with candle's threads (or one per worker).
    #[default]
    Cpu,
    /// CUDA device `N` (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        match s.to_ascii_lowercase().as_str() {
            "cpu" => return Ok(DeviceSpec::Cpu),
            "cuda" | "gpu" => return Ok(DeviceSpec::Cuda(0)),
            _ => {}
        }
        let ordinal = s
            .strip_prefix("cuda:")
            .or_else(|| s.strip_prefix("CUDA:"))
            .ok_or_else(|| format!("`{s}` is not a device: expected cpu, cuda or cuda:N"))?;
        ordinal.parse::<usize>().map(DeviceSpec::Cuda).map_err(|_| {
            format!("`{s}`: the CUDA device number must be a whole number, as in cuda:0")
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// What a build without the CUDA backend says to `--device cuda`.
pub const NO_CUDA_BUILD: &str = "this calico was built without CUDA; build it with \
     `cargo build --release -p calico-cli --features cuda` (docs/gpu.md) or pass --device cpu";

impl DeviceSpec {
    /// Opens the device. A CUDA device in a build without candle's CUDA
    /// backend, or one the machine does not have, is an input error
    /// naming the device and what to do.
    pub fn open(&self) -> Result<Device> {
        match *self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(AppError::Input(format!("--device {self}: {NO_CUDA_BUILD}")));
                }
                Device::new_cuda(n).map_err(|e| {
                    AppError::Input(format!(
                        "--device {self}: cannot open CUDA device {n} ({e}); check the \
                         driver and CUDA 13 libraries (docs/gpu.md) or pass --device cpu"
                    ))
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cpu_and_cuda_ordinals() {
        for (text, want) in [
            ("cpu", DeviceSpec::Cpu),
            (" CPU ", DeviceSpec::Cpu),
            ("cuda", DeviceSpec::Cuda(0)),
            ("gpu", DeviceSpec::Cuda(0)),
            ("cuda:0", DeviceSpec::Cuda(0)),
            ("cuda:3", DeviceSpec::Cuda(3)),
        ] {
            assert_eq!(text.parse::<DeviceSpec>().unwrap(), want, "{text}");
        }
        assert_eq!(DeviceSpec::Cuda(2).to_string(), "cuda:2");
        assert_eq!(
            "cuda:2".parse::<DeviceSpec>().unwrap().to_string(),
            "cuda:2"
        );
    }

    #[test]
    fn other_names_are_refused_with_the_accepted_forms() {
        for bad in ["", "metal", "cuda:", "cuda:-1", "cuda:x", "cuda0"] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains("cpu") || e.contains("cuda:0"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_cpu_opens_and_cuda_needs_the_backend() {
        assert!(DeviceSpec::Cpu.open().unwrap().is_cpu());
        if !candle_core::utils::cuda_is_available() {
            let e = DeviceSpec::Cuda(0).open().unwrap_err();
            assert!(e.is_input());
            assert!(e.to_string().contains("--features cuda"), "{e}");
            assert!(e.to_string().starts_with("--device cuda:0:"), "{e}");
        }
    }
}
