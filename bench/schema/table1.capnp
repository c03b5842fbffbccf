# The Table 1 shapes for the capnp-rpc peer (compiled only where the capnp tool is installed).
@0xd3b5e1c2a4f60789;
interface Table1 {
  void @0 () -> ();
  int @1 (x :Int32) -> ();
  intInt @2 (x :Int32) -> (y :Int32);
  int4 @3 (a :Int32, b :Int32, c :Int32, d :Int32) -> (y :Int32);
  bytes @4 (b :Data) -> ();
  retBytes @5 (n :Int32) -> (b :Data);
}
