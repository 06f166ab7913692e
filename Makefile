.PHONY: test demo bench
test:
	scripts/test
demo:
	go run ./examples/namecheck race
bench:
	scripts/bench
