//! `milena-loadtest`: parse flags, run, print the report.

use std::process::ExitCode;

use clap::Parser;
use milena_loadtest::{Args, Report, report};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = args.threads {
        rt.worker_threads(t.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match rt.block_on(milena_loadtest::run(args.config())) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.json {
        match serde_json::to_string(&report) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("{}", report.text());
    }
    if let Some(path) = &args.plot {
        let mut runs = vec![report];
        for c in &args.compare {
            match std::fs::read_to_string(c)
                .map_err(|e| e.to_string())
                .and_then(|t| serde_json::from_str::<Report>(&t).map_err(|e| e.to_string()))
            {
                Ok(r) => runs.push(r),
                Err(e) => {
                    eprintln!("error: cannot read {}: {e}", c.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        if let Err(e) = report::plot(path, &runs) {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
