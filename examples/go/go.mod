module github.com/chanlite/chanlite/examples/go

go 1.21

require github.com/chanlite/chanlite/bindings/go v0.1.0

require github.com/mattn/go-sqlite3 v1.14.53 // indirect

// The module in this repository, until it is published.
replace github.com/chanlite/chanlite/bindings/go => ../../bindings/go
