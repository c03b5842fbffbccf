fn main() {
    // Calc and Keiretsu with JSON access too (`multispace call`); the client endpoint is
    // called only by the service.
    let json = multispace_stubgen::Builder::new().json(true);
    json.compile("interfaces/calc.rs");
    json.compile("interfaces/keiretsu.rs");
    multispace_stubgen::compile("interfaces/keiretsu_client.rs");
}
