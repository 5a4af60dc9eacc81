//! `lookout`: telemetry, config, run, signals, drain.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lookout::cli::{Cli, Command, CommandCommand, ModelCommand, SiteCameraCommand, SiteCommand};
use tokio_util::sync::CancellationToken;

fn main() -> ExitCode {
    let cli = Cli::parse();
    lookout::telemetry::init();
    match cli.command {
        Command::CheckConfig { config } => match lookout::config::load(&config) {
            Ok(c) => {
                println!("{}: ok ({} cameras, {} models)", config.display(), c.cameras.len(), c.models.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Run { config, grace_secs, summary } => {
            let config = match lookout::config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(2);
                }
            };
            block_on(async move {
                let shutdown = CancellationToken::new();
                tokio::spawn(stop_on_signal(shutdown.clone()));
                let s = lookout::agent::run(config, shutdown, Duration::from_secs(grace_secs)).await?;
                if summary {
                    println!("{}", serde_json::to_string(&s)?);
                }
                Ok(())
            })
        }
        Command::Probe { url, seconds, udp, manifest, min_score, out } => {
            let manifest = match manifest.map_or_else(lookout::demo::default_manifest, Ok) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
            let transport = if udp { lookout::config::Transport::Udp } else { lookout::config::Transport::Tcp };
            let opts = lookout::probe::ProbeOptions { url, seconds, transport, manifest, min_score, out };
            match lookout::probe::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Command(CommandCommand::Sign { name, key, agent, expires_in }) => {
            match lookout::control::sign_command(&name, &key, &agent, expires_in) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Model(cmd) => {
            let result = match cmd {
                ModelCommand::Keygen { secret, public } => lookout::model::keygen(&secret, &public),
                ModelCommand::Sign { manifest, key } => lookout::model::sign(&manifest, &key),
                ModelCommand::Verify { manifest, pubkey } => lookout::model::verify(&manifest, &pubkey),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Site(cmd) => site(cmd),
        Command::Demo { cameras, mqtt, fps, seconds } => block_on(async move {
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            if let Some(s) = seconds {
                let t = shutdown.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(s)).await;
                    t.cancel();
                });
            }
            lookout::demo::run(lookout::demo::DemoOptions { cameras, mqtt, fps }, shutdown).await
        }),
    }
}

/// `lookout site …`: exit status 2 when the input or the config is refused, 1 when etcd
/// cannot be reached.
fn site(cmd: SiteCommand) -> ExitCode {
    use lookout::site::admin::{self, Outcome};
    let config_path = match &cmd {
        SiteCommand::Status { config, .. } => config,
        SiteCommand::Camera(
            SiteCameraCommand::Add { config, .. }
            | SiteCameraCommand::Update { config, .. }
            | SiteCameraCommand::Remove { config, .. }
            | SiteCameraCommand::List { config, .. },
        ) => config,
    };
    let config = match lookout::config::load(config_path) {
        Ok(c) if c.site.is_some() => c,
        Ok(_) => {
            eprintln!("error: {} has no [site] section", config_path.display());
            return ExitCode::from(2);
        }
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cmd {
            SiteCommand::Status { json, .. } => admin::status(&config, json).await,
            SiteCommand::Camera(SiteCameraCommand::Add { file, .. }) => {
                admin::camera_put(&config, &admin::read_input(&file)?, false).await
            }
            SiteCommand::Camera(SiteCameraCommand::Update { file, .. }) => {
                admin::camera_put(&config, &admin::read_input(&file)?, true).await
            }
            SiteCommand::Camera(SiteCameraCommand::Remove { id, .. }) => admin::camera_remove(&config, &id).await,
            SiteCommand::Camera(SiteCameraCommand::List { json, .. }) => admin::camera_list(&config, json).await,
        }
    });
    match result {
        Ok(Outcome::Done(out)) => {
            println!("{out}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::Refused(why)) => {
            eprintln!("refused: {why}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(f);
    // A model download still blocked in a read must not hold the exit past the drain:
    // what it staged is removed at the next start.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Cancels on SIGINT or SIGTERM; a second signal exits at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
        return;
    };
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    tracing::info!("signal received, draining (signal again to exit now)");
    shutdown.cancel();
    tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
    // Exiting skips destructors: the demo's broker, outside the terminal's process
    // group, would outlive us.
    lookout::demo::broker::stop_detached();
    std::process::exit(130);
}
