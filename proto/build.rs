//! Generates the Rust types and the tonic service from `etcdmon/v1/*.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "etcdmon/v1/common.proto",
        "etcdmon/v1/report.proto",
        "etcdmon/v1/ingest.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        // Reports are printed as JSON by `etcdmon-agent collect --format json`.
        .type_attribute(".etcdmon.v1", "#[derive(serde::Serialize)]")
        // A report's body prints as `"body": {"status": {...}}`.
        .type_attribute(
            ".etcdmon.v1.Report.body",
            "#[serde(rename_all = \"snake_case\")]",
        )
        // Enums travel as i32; print their names instead of numbers.
        .field_attribute(
            ".etcdmon.v1.Failure.kind",
            "#[serde(serialize_with = \"crate::serde_enum::error_kind\")]",
        )
        .field_attribute(
            ".etcdmon.v1.MetricFamily.type",
            "#[serde(serialize_with = \"crate::serde_enum::metric_type\")]",
        )
        .field_attribute(
            ".etcdmon.v1.EtcdProcess.discovery",
            "#[serde(serialize_with = \"crate::serde_enum::process_discovery\")]",
        )
        .field_attribute(
            ".etcdmon.v1.Certificate.role",
            "#[serde(serialize_with = \"crate::serde_enum::cert_role\")]",
        )
        .compile_protos(&protos, &["."])?;
    Ok(())
}
