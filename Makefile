.PHONY: test demo bench chaos
test:
	scripts/test
demo:
	go run ./examples/namecheck race
bench:
	scripts/bench
chaos:
	scripts/chaos
