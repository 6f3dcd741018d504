# The two commands that matter: `make run` and `make test`. Everything installs from here.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SERVICES := identity dossier matching billing notifications
# Debian packages the tests use: Chromium (Playwright drives it), fonts embedded in
# invoices, clamd (the tests start it with their own signature database).
DEBIAN_PACKAGES := chromium fonts-dejavu-core clamav-daemon

.PHONY: venv system-deps proto proto-check migrate run test lint format reqs outbox bench ci clean backup restore

venv: $(STAMP)

# Pinned versions (requirements/lock.txt); a .pth puts the repo and gen/ on the path.
$(STAMP): requirements/lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/gen" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/secondopinion-dev.pth"
	touch $(STAMP)

# Installs missing Debian packages (CI and developer machines run as root).
system-deps:
	@missing=""; for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

proto: venv
	$(PY) protos/generate.py

# Fails when gen/ is not what the .proto files produce.
proto-check: venv
	$(PY) protos/generate.py --check

migrate: venv
	for service in $(SERVICES); do $(PY) -m services.shared.migrate $$service || exit 1; done

# The whole platform with embedded defaults; Ctrl-C stops everything.
run: venv proto
	@$(MAKE) --no-print-directory system-deps DEBIAN_PACKAGES="clamav-daemon fonts-dejavu-core"
	$(PY) -m deploy.devstack

# Encrypted backup of the dev stack's state (SEC-04); restore with the stack stopped.
backup: venv
	$(PY) -m deploy.backup create

restore: venv
	@test -n "$(BACKUP)" || { echo "usage: make restore BACKUP=backups/backup-..."; exit 2; }
	$(PY) -m deploy.backup restore "$(BACKUP)"

test: venv system-deps
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services workflows deploy bench tests protos/generate.py

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

reqs: venv
	$(PY) -m pytest --collect-only -q --req-report | sed -n '/requirement coverage/,$$p'

# The latest SMS and emails of the dev stack (so a person can log in with the demo data).
outbox: venv
	$(PY) -m services.notifications.outbox $(ARGS)

bench: venv
	$(PY) -m bench

ci: lint proto-check test

clean:
	rm -rf var/*.db var/*.db-* var/temporal.db var/devstack-logs
