package yamlstrict

import (
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

var unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()

// WholeNumbers reports the first scalar of doc that the YAML decoder
// would truncate: a number with a fractional part whose field in v (a
// pointer to the value doc decodes into) is an integer. The error names
// the field's path in v's YAML names (limits.max_vips, ports[1],
// routes["eu"]["paris"]) and the line. Types with their own UnmarshalYAML
// read their scalars themselves and are not looked into.
func WholeNumbers(doc *yaml.Node, v any) error {
	return walk(doc, reflect.TypeOf(v), "", 0, nil)
}

// Check is WholeNumbers, and also calls custom for every node whose field
// in v has a type with its own UnmarshalYAML, with the field's path: run
// before decoding, it lets such a type's error name the field, which the
// decoder's does not.
func Check(doc *yaml.Node, v any, custom func(path string, n *yaml.Node, t reflect.Type) error) error {
	return walk(doc, reflect.TypeOf(v), "", 0, custom)
}

// maxDepth bounds the walk over recursive types and nested aliases.
const maxDepth = 64

func walk(n *yaml.Node, t reflect.Type, path string, depth int, custom func(string, *yaml.Node, reflect.Type) error) error {
	if n == nil || t == nil || depth > maxDepth {
		return nil
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
		if depth++; depth > maxDepth {
			return nil
		}
	}
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return nil
		}
		return walk(n.Content[0], t, path, depth+1, custom)
	}
	for {
		if t.Implements(unmarshalerType) || reflect.PointerTo(t).Implements(unmarshalerType) {
			if custom == nil {
				return nil
			}
			return custom(name(path), n, t)
		}
		if t.Kind() != reflect.Pointer {
			break
		}
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!float" {
			return nil
		}
		f, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64)
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return nil // the decoder refuses these itself
		}
		if f != math.Trunc(f) {
			return fmt.Errorf("%s: %s is not a whole number (line %d)", name(path), n.Value, n.Line)
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return nil
		}
		for i, c := range n.Content {
			if err := walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i), depth+1, custom); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := walk(n.Content[i+1], t.Elem(), path+"["+strconv.Quote(n.Content[i].Value)+"]", depth+1, custom); err != nil {
				return err
			}
		}
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		fields := map[string]reflect.Type{}
		structFields(t, fields, 0)
		for i := 0; i+1 < len(n.Content); i += 2 {
			key := n.Content[i].Value
			ft, ok := fields[key]
			if !ok {
				continue // unknown keys are KnownFields' to refuse
			}
			p := key
			if path != "" {
				p = path + "." + key
			}
			if err := walk(n.Content[i+1], ft, p, depth+1, custom); err != nil {
				return err
			}
		}
	}
	return nil
}

// structFields maps the YAML keys of t's fields to their types, with the
// fields of inlined structs as the decoder merges them.
func structFields(t reflect.Type, into map[string]reflect.Type, depth int) {
	if depth > maxDepth {
		return
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() && !f.Anonymous {
			continue
		}
		tag := f.Tag.Get("yaml")
		if tag == "-" {
			continue
		}
		key, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") {
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				structFields(ft, into, depth+1)
			}
			continue
		}
		if key == "" {
			key = strings.ToLower(f.Name)
		}
		into[key] = f.Type
	}
}

func name(path string) string {
	if path == "" {
		return "value"
	}
	return path
}

// Paths lists the YAML paths of the fields of t, a struct type or a
// pointer to one, as WholeNumbers names them but with [] for any list
// index (limits.max_vips, replication.volumes[].mirrors[].peer), in
// sorted order; inlined structs are merged, maps and custom types not
// looked into. Documentation tests compare it with the fields they list.
func Paths(t reflect.Type) []string {
	var out []string
	var walk func(t reflect.Type, prefix string, depth int)
	walk = func(t reflect.Type, prefix string, depth int) {
		fields := map[string]reflect.Type{}
		structFields(t, fields, 0)
		for key, ft := range fields {
			p := prefix + key
			out = append(out, p)
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Slice || ft.Kind() == reflect.Array {
				ft, p = ft.Elem(), p+"[]"
				for ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
			}
			if ft.Kind() == reflect.Struct && depth < maxDepth && !reflect.PointerTo(ft).Implements(unmarshalerType) {
				walk(ft, p+".", depth+1)
			}
		}
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	walk(t, "", 0)
	slices.Sort(out)
	return out
}
