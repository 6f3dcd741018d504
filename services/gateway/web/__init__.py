"""Server-rendered portals (patients, doctors, coordinators): no build step, no CDN, works
offline; forms post back, a small script adds upload progress."""
