//! `lova-fast kernels`: list the embedded CUDA kernels, or compile them all with
//! NVRTC (no GPU needed) and report registers, shared memory and spills.

use anyhow::{Result, bail};
use clap::Args;

#[derive(Args)]
pub struct KernelsArgs {
    /// Compile every kernel to a cubin and print registers, shared memory and
    /// spills per kernel; exit status 1 on any compile error. Needs NVRTC
    /// (libnvrtc.so.13 or .12 on LD_LIBRARY_PATH), not a GPU.
    #[arg(long)]
    pub check: bool,

    /// GPU architecture to compile for (repeatable) [default: sm_80 and sm_90].
    #[arg(long, value_name = "sm_XY")]
    pub arch: Vec<String>,
}

pub fn run(args: KernelsArgs) -> Result<()> {
    let sources = lova_fast::kernels::KERNEL_SOURCES;
    if !args.check {
        for (file, source) in sources {
            let names = lova_fast::backend::cuda::compile::kernel_names(source);
            println!("{file}.cu: {}", names.join(", "));
        }
        return Ok(());
    }
    let arches = if args.arch.is_empty() { vec!["sm_80".to_string(), "sm_90".to_string()] } else { args.arch };
    let (report, failures) = lova_fast::backend::cuda::compile::check_report(&arches)?;
    print!("{report}");
    if failures > 0 {
        bail!("{failures} kernel compilation(s) failed");
    }
    Ok(())
}
