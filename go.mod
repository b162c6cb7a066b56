module github.com/premirror/premirror

go 1.26
