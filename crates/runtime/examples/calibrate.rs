//! Prints the `cpu` profile calibrated on this machine as TOML (`--device FILE` reads it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let p = streamrec_runtime::calibrate::cpu_profile(streamrec_graph::DeviceProfile::cpu())?;
    print!("{}", p.to_toml_string());
    Ok(())
}
