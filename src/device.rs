//! Device selection. The CUDA backend is not built yet (issue 6); `--device auto` probes for a GPU without
//! ever panicking (cudarc panics when libcuda is missing unless guarded, STACK.md §1) and uses the CPU.

use crate::config::DeviceKind;

/// Probe for a CUDA device: Ok(description) or Err(why not).
pub fn probe_cuda() -> Result<String, String> {
    // SAFETY: `is_culib_present` only tries to dlopen the driver library by name and reports success; it
    // has no preconditions and does not touch any CUDA state.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda) found".into());
    }
    let n = cudarc::driver::CudaContext::device_count().map_err(|e| format!("{e:?}"))?;
    if n == 0 {
        return Err("the CUDA driver reports 0 devices".into());
    }
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| format!("{e:?}"))?;
    let name = ctx.name().unwrap_or_else(|_| "unknown".into());
    Ok(format!("{n} CUDA device(s); device 0 is {name}"))
}

/// The line printed for the device choice; the backend is always the CPU for now.
pub fn describe_choice(kind: DeviceKind) -> String {
    match kind {
        DeviceKind::Cpu => "device: cpu (requested)".into(),
        DeviceKind::Auto => match probe_cuda() {
            Ok(found) => format!(
                "device: auto -> cpu ({found}, but this build has no CUDA backend yet; training on the CPU)"
            ),
            Err(why) => format!("device: auto -> cpu ({why})"),
        },
    }
}
