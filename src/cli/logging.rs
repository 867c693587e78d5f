//! Tracing for every command: stdout or stderr (text or JSON), optional daily log files, and
//! the recent-errors ring that `/api/status` shows.

use anyhow::Context;

/// Sets up tracing: stdout (text or JSON), optional daily log files, and the recent-errors
/// ring. The returned guard flushes the log files when `main` ends.
pub fn init_tracing(
    logging: &roomlog::config::Logging,
    to_stderr: bool,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("ROOMLOG_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    use std::io::IsTerminal;
    // Colour only on a terminal: journald and files keep escape codes as text.
    let (writer, ansi) = if to_stderr {
        (tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal())
    } else {
        (tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout), std::io::stdout().is_terminal())
    };
    let stdout = if logging.json {
        tracing_subscriber::fmt::layer().json().with_writer(writer).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer).boxed()
    };
    let (files, guard) = match &logging.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating log folder {}", dir.display()))?;
            let appender = tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("roomlog")
                .filename_suffix("log")
                .max_log_files(logging.keep_files.max(1))
                .build(dir)
                .with_context(|| format!("log files in {}", dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer);
            let layer =
                if logging.json { layer.json().boxed() } else { layer.fmt_fields(FileFields::default()).boxed() };
            (Some(layer.with_filter(filter())), Some(guard))
        }
        None => (None, None),
    };
    // The recent-errors ring sees warnings and errors whatever the output filter says.
    tracing_subscriber::registry()
        .with(stdout.with_filter(filter()))
        .with(files)
        .with(roomlog::recent_errors::RecentErrorsLayer.with_filter(tracing::level_filters::LevelFilter::WARN))
        .init();
    Ok(guard)
}

/// The log files' span field formatter: `DefaultFields` under a type of its own. Span fields
/// are formatted once per formatter type and shared between layers, so with the terminal's
/// formatter type the files got the terminal's colour codes in span fields (issue 17).
#[derive(Debug, Default)]
struct FileFields(tracing_subscriber::fmt::format::DefaultFields);

impl<'a> tracing_subscriber::field::MakeVisitor<tracing_subscriber::fmt::format::Writer<'a>> for FileFields {
    type Visitor = tracing_subscriber::fmt::format::DefaultVisitor<'a>;

    fn make_visitor(&self, target: tracing_subscriber::fmt::format::Writer<'a>) -> Self::Visitor {
        self.0.make_visitor(target)
    }
}
