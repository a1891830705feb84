//! `weir import FILE...`: the command line of [`weir_control::import`].

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use weir_control::import::{self, Input, Options, DEFAULT_LISTEN, MAX_INPUT_BYTES};

/// `weir import`'s arguments.
#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// Manifest files (multi-document YAML); `-` reads standard input.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The stable version's upstreams of a service: `SERVICE=HOST:PORT[,HOST:PORT...]` (repeatable).
    #[arg(long = "upstream", value_name = "SERVICE=ADDR,...")]
    upstreams: Vec<String>,
    /// The canary version's upstreams of a service: `SERVICE=HOST:PORT[,HOST:PORT...]` (repeatable).
    #[arg(long = "canary-upstream", value_name = "SERVICE=ADDR,...")]
    canary_upstreams: Vec<String>,
    /// The listener's address.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN)]
    listen: String,
    /// Use this Prometheus for every Prometheus query (in-cluster names do not resolve outside
    /// Kubernetes).
    #[arg(long, value_name = "URL")]
    prometheus: Option<String>,
    /// Write `admin.address` (default: left out, so weir's default 127.0.0.1:3100 applies).
    #[arg(long, value_name = "ADDR")]
    admin_address: Option<String>,
}

/// Reads the manifests, prints the config on standard output and the notes on standard error.
pub fn run(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let mut options = Options {
        listen: args.listen,
        prometheus: args.prometheus,
        admin: args.admin_address,
        ..Options::default()
    };
    options.upstreams = flags(&args.upstreams)?;
    options.canary_upstreams = flags(&args.canary_upstreams)?;
    let mut inputs = Vec::new();
    for file in &args.files {
        let name = file.display().to_string();
        let mut bytes = Vec::new();
        // One byte over the limit is enough to refuse the file without reading all of it.
        let limit = MAX_INPUT_BYTES as u64 + 1;
        if name == "-" {
            std::io::stdin()
                .lock()
                .take(limit)
                .read_to_end(&mut bytes)
                .context("reading standard input")?;
        } else {
            std::fs::File::open(file)
                .and_then(|f| f.take(limit).read_to_end(&mut bytes))
                .with_context(|| format!("reading {name}"))?;
        }
        let text =
            String::from_utf8(bytes).map_err(|_| anyhow::anyhow!("{name}: not UTF-8 text"))?;
        inputs.push(Input { name, text });
    }
    let imported = import::import(&inputs, &options)?;
    let mut stderr = std::io::stderr().lock();
    for note in &imported.notes {
        let _ = writeln!(stderr, "note: {note}");
    }
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(imported.yaml.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing the config")?;
    Ok(ExitCode::SUCCESS)
}

fn flags(values: &[String]) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let mut map = BTreeMap::new();
    for value in values {
        let (service, addrs) = import::parse_upstream_flag(value)?;
        map.entry(service).or_insert_with(Vec::new).extend(addrs);
    }
    Ok(map)
}
