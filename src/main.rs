//! The `panoptes` command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use panoptes::config::{self, LogFormat};
use panoptes::run::Roles;

/// Panoptes: camera analytics. Pulls RTSP cameras, records clips, samples frames and audio,
/// and answers questions about them over HTTP.
#[derive(Parser)]
#[command(name = "panoptes", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The config file option shared by the commands that read one.
#[derive(clap::Args)]
struct ConfigArg {
    /// Config file.
    #[arg(
        long,
        short,
        env = "PANOPTES_CONFIG",
        default_value = "config/panoptes.toml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Runs every role in one process (edge ingest, inference and the API).
    Run(ConfigArg),
    /// Runs the edge role only: camera ingest, recording and sampling. On a NATS bus, edge
    /// nodes share the cameras.
    Edge(ConfigArg),
    /// Runs the infer role only: sampled frames and audio from the bus become insights.
    Infer(ConfigArg),
    /// Runs the api role only: the HTTP API over the shared bus and stores.
    Api(ConfigArg),
    /// Checks a config file and prints every problem found.
    Validate(ConfigArg),
    /// Runs every model over a recording or an image and prints what they found, one JSON
    /// object per line.
    Analyze {
        /// Config file whose [models] and [infer] settings to use (defaults otherwise).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Time between the frames analysed in a recording.
        #[arg(long, default_value = "1s")]
        every: humantime::Duration,
        /// A recording (MP4, MKV, WAV, anything GStreamer plays) or an image (PNG, JPEG).
        file: PathBuf,
    },
    /// Serves recorded MP4/MKV files over RTSP in a loop, without re-encoding.
    Replay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8554")]
        listen: SocketAddr,
        /// Mounts per file: /<stem>-0 ... /<stem>-<N-1> (all sharing one stream).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        copies: u32,
        /// Demand RTSP digest authentication with this user name; the password comes from
        /// the environment variable PANOPTES_REPLAY_PASSWORD.
        #[arg(long)]
        username: Option<String>,
        /// Log format.
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormatArg,
        /// Files to serve, one mount each at /<file stem>.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormatArg {
    Human,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate(ConfigArg { config }) => match config::load(&config) {
            Ok(c) => {
                println!(
                    "{}: valid ({} camera{})",
                    config.display(),
                    c.cameras.len(),
                    if c.cameras.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprint!("{errors}");
                ExitCode::from(2)
            }
        },
        Command::Analyze {
            config,
            every,
            file,
        } => analyze(config, every.into(), &file),
        Command::Run(ConfigArg { config }) => serve(
            config,
            Roles {
                edge: true,
                api: true,
                infer: true,
            },
        ),
        Command::Edge(ConfigArg { config }) => serve(
            config,
            Roles {
                edge: true,
                api: false,
                infer: false,
            },
        ),
        Command::Infer(ConfigArg { config }) => serve(
            config,
            Roles {
                edge: false,
                api: false,
                infer: true,
            },
        ),
        Command::Api(ConfigArg { config }) => serve(
            config,
            Roles {
                edge: false,
                api: true,
                infer: false,
            },
        ),
        Command::Replay {
            listen,
            copies,
            username,
            log_format,
            files,
        } => {
            let format = match log_format {
                LogFormatArg::Human => LogFormat::Human,
                LogFormatArg::Json => LogFormat::Json,
            };
            panoptes::telemetry::init_logs(format, "info");
            let auth = match username {
                None => None,
                Some(username) => match std::env::var("PANOPTES_REPLAY_PASSWORD") {
                    Ok(password) if !password.is_empty() => {
                        Some(panoptes::replay::Credentials { username, password })
                    }
                    _ => {
                        eprintln!(
                            "panoptes replay: --username needs the password in PANOPTES_REPLAY_PASSWORD"
                        );
                        return ExitCode::from(2);
                    }
                },
            };
            match panoptes::replay::run(listen, files, copies, auth) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("panoptes replay: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn serve(path: PathBuf, roles: Roles) -> ExitCode {
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(2);
        }
    };
    panoptes::telemetry::init_logs(config.log.format, &config.log.level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("panoptes")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("panoptes: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(panoptes::run::run(path, config, roles)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "panoptes failed");
            eprintln!("panoptes: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn analyze(
    config: Option<PathBuf>,
    every: std::time::Duration,
    file: &std::path::Path,
) -> ExitCode {
    use std::io::Write;
    let loaded = match config {
        Some(path) => config::load(&path),
        None => config::load_str("", "(defaults)", &|_| None),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(errors) => {
            eprint!("{errors}");
            return ExitCode::from(2);
        }
    };
    panoptes::telemetry::init_logs(LogFormat::Human, "warn");
    let started = std::time::Instant::now();
    let models = match panoptes::infer::Models::load(&config.infer, &config.models) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("panoptes analyze: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!(
        "panoptes analyze: models loaded from {} in {:.1} s (ONNX Runtime {}, provider {:?}, {} threads)",
        models.runtime.dir().display(),
        started.elapsed().as_secs_f32(),
        models.runtime.library().display(),
        models.runtime.provider(),
        models.runtime.threads(),
    );
    let mut stdout = std::io::stdout().lock();
    let mut emit = |f: &panoptes::infer::analyze::Finding| {
        if let Ok(line) = serde_json::to_string(f) {
            let _ = writeln!(stdout, "{line}");
        }
    };
    match panoptes::infer::analyze::analyze(&models, file, every, &mut emit) {
        Ok(s) => {
            eprintln!(
                "panoptes analyze: {} frames ({:.1} s in vision models), {:.1} s of audio ({:.1} s in speech models), {} findings",
                s.frames, s.vision_s, s.audio_s, s.speech_s, s.findings
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("panoptes analyze: {e}");
            ExitCode::FAILURE
        }
    }
}
