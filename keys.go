package txlock

import (
	"reflect"
	"slices"

	"github.com/txlock/txlock/internal/keyfmt"
)

// normalizeKeys returns keys sorted and deduplicated, or an error wrapping
// ErrInvalid if one is empty. It never modifies keys.
func normalizeKeys(keys []string) ([]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	for i, k := range keys {
		if k == "" {
			return nil, invalid("key %d is empty", i)
		}
	}
	if len(keys) == 1 {
		return keys[:1:1], nil
	}
	out := slices.Clone(keys)
	slices.Sort(out)
	return slices.Compact(out), nil
}

func describeKeys(keys []string) string { return keyfmt.List(keys) }

// isNil reports whether v is nil or an interface holding a nil pointer,
// map, slice, channel or function, so a typed-nil *sql.DB is caught before
// it can panic inside database/sql.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	switch rv := reflect.ValueOf(v); rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Chan, reflect.Func, reflect.Interface:
		return rv.IsNil()
	}
	return false
}
