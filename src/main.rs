fn main() {
    std::process::exit(serialhub::cli::main());
}
