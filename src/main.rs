use clap::Parser;

fn main() {
    let cli = snapcrypt::cli::Cli::parse();
    std::process::exit(snapcrypt::cli::run(cli));
}
