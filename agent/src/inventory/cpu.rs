//! Processors: `/proc/cpuinfo` (model, flags, logical CPUs) merged with SMBIOS type 4 sockets.

use anneal_shared::inventory::{Cpu, CpuSocket};

use super::root::Root;
use super::CollectError;

/// What `/proc/cpuinfo` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuInfo {
    /// `model name` of the first processor.
    pub model: Option<String>,
    /// Number of `processor` entries.
    pub logical_cpus: u32,
    /// `flags` (x86) or `Features` (arm64) of the first processor.
    pub flags: Vec<String>,
}

/// Reads `/proc/cpuinfo` under the sysroot.
pub fn read_cpuinfo(root: &Root) -> Result<CpuInfo, CollectError> {
    let text = root.read_string("/proc/cpuinfo")?;
    let info = parse_cpuinfo(&text);
    if info.logical_cpus == 0 {
        return Err(CollectError::Invalid(
            "/proc/cpuinfo lists no processors".into(),
        ));
    }
    Ok(info)
}

/// Parses `/proc/cpuinfo`: one `processor` line per logical CPU; model and flags from the first.
pub fn parse_cpuinfo(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "processor" => info.logical_cpus += 1,
            // x86 says "model name"; some other architectures say "cpu model" or "Processor".
            "model name" | "cpu model" | "Processor"
                if info.model.is_none() && !value.is_empty() =>
            {
                info.model = Some(value.to_string());
            }
            // x86 says "flags", arm64 "Features".
            "flags" | "Features" if info.flags.is_empty() => {
                info.flags = value.split_whitespace().map(str::to_string).collect();
            }
            _ => {}
        }
    }
    info
}

/// Combines cpuinfo and the SMBIOS sockets; `None` only when both are missing.
pub fn merge(info: Option<CpuInfo>, sockets: Vec<CpuSocket>) -> Option<Cpu> {
    if info.is_none() && sockets.is_empty() {
        return None;
    }
    let info = info.unwrap_or_default();
    // Prefer the kernel's model name; fall back to the socket's version string.
    let model = info
        .model
        .or_else(|| sockets.iter().find_map(|s| s.version.clone()));
    Some(Cpu {
        model,
        logical_cpus: info.logical_cpus,
        flags: info.flags,
        sockets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "processor\t: 0
vendor_id\t: GenuineIntel
model name\t: QEMU Virtual CPU version 2.5+
flags\t\t: fpu de pse tsc msr
bogomips\t: 4000.00

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: QEMU Virtual CPU version 2.5+
flags\t\t: fpu de pse tsc msr

";

    #[test]
    fn parses_x86_cpuinfo() {
        let info = parse_cpuinfo(X86);
        assert_eq!(info.logical_cpus, 2);
        assert_eq!(info.model.as_deref(), Some("QEMU Virtual CPU version 2.5+"));
        assert_eq!(info.flags, vec!["fpu", "de", "pse", "tsc", "msr"]);
    }

    #[test]
    fn parses_arm64_cpuinfo() {
        let info = parse_cpuinfo(
            "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm\n\nprocessor\t: 1\nFeatures\t: fp asimd evtstrm\n",
        );
        assert_eq!(info.logical_cpus, 2);
        assert_eq!(info.model, None);
        assert_eq!(info.flags.len(), 3);
    }

    #[test]
    fn merge_keeps_sockets_without_cpuinfo() {
        let socket = CpuSocket {
            version: Some("Xeon".into()),
            cores: Some(8),
            ..Default::default()
        };
        let cpu = merge(None, vec![socket]).unwrap();
        assert_eq!(cpu.model.as_deref(), Some("Xeon"));
        assert_eq!(cpu.logical_cpus, 0);
        assert!(merge(None, vec![]).is_none());
    }
}
