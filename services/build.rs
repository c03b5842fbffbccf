fn main() {
    multispace_stubgen::compile("interfaces/calc.rs");
    multispace_stubgen::compile("interfaces/keiretsu.rs");
    multispace_stubgen::compile("interfaces/keiretsu_client.rs");
}
